"""tools/convert_config.py and tools/train.py --norm: any config to SN/SSN from the command line."""
import importlib.util
import json
import os.path as osp

import pytest
from mmengine.config import Config

import ssn_plugins  # noqa: F401
from ssn_plugins.builder import build_model
from ssn_plugins.norm import is_switch_norm

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CFG = osp.join(REPO, 'configs', 'demo', 'fcn_r18-ssn_demo.py')
TINY = ['train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', 'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False', 'default_hooks.logger.interval=1',
        'val_dataloader.batch_size=1', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2']


def _tool(name):
    spec = importlib.util.spec_from_file_location(f'ssn_tool_{name}', osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bn_demo_config(folder) -> str:
    """The demo FCN as a user's plain BN config: SyncBN in every norm_cfg, none of our hooks."""
    path = osp.join(folder, 'fcn_r18_bn_demo.py')
    with open(path, 'w') as f:
        f.write(f"_base_ = ['{SEG_CFG}']\n"
                "bn = dict(type='SyncBN', requires_grad=True)\n"
                "model = dict(backbone=dict(norm_cfg=dict(_delete_=True, **bn)),\n"
                "             decode_head=dict(norm_cfg=dict(_delete_=True, **bn)),\n"
                "             auxiliary_head=dict(norm_cfg=dict(_delete_=True, **bn)))\n"
                "custom_hooks = []\n")
    return path


def test_convert_config_tool_writes_an_editable_config(tmp_path, capsys):
    out = str(tmp_path / 'gn_ssn.py')
    _tool('convert_config').main(['mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py', '--norm', 'SSN',
                                  '-o', out])
    assert 'wrote' in capsys.readouterr().out
    text = open(out).read()
    assert text.startswith('# mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py converted to SSN')
    assert "GN options ['num_groups'] dropped" in text
    cfg = Config.fromfile(out)
    cfg.model.backbone.depth = 18
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    model = build_model(cfg, from_scratch=True)
    assert sum(map(is_switch_norm, model.modules())) == 36
    assert not [m for m in model.modules() if type(m).__name__ in ('BatchNorm2d', 'GroupNorm')]


def test_convert_config_tool_never_writes_over_its_input(tmp_path):
    source = _bn_demo_config(str(tmp_path))
    before = open(source).read()
    with pytest.raises(SystemExit, match='the input config'):
        _tool('convert_config').main([source, '-o', source])
    assert open(source).read() == before


@pytest.mark.slow
def test_train_norm_converts_a_bn_config_and_test_reads_the_work_dir_config(demo_dir):
    """A plain BN config trains as SSN with --norm SSN; the work dir keeps the converted config,
    and tools/test.py on it evaluates the checkpoint."""
    config = _bn_demo_config(str(demo_dir))
    work = str(demo_dir / 'work')
    _tool('train').main([config, '--norm', 'SSN', '--work-dir', work, '--cfg-options', *TINY])
    kept = osp.join(work, 'fcn_r18_bn_demo.py')
    cfg = Config.fromfile(kept)
    assert cfg.model.backbone.norm_cfg.type == 'SSN' == cfg.model.decode_head.norm_cfg.type
    assert 'SSNRadiusHook' in [h['type'] for h in cfg.custom_hooks]
    out = str(demo_dir / 'metrics.json')
    _tool('test').main([kept, osp.join(work, 'iter_2.pth'), '--work-dir', work, '--out-metrics', out,
                        '--cfg-options', *TINY])
    assert 0.0 <= json.load(open(out))['mIoU'] <= 100.0
