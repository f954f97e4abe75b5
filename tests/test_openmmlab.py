import pytest
import torch
from mmcv.cnn import build_norm_layer
from mmengine.optim import build_optim_wrapper
from mmengine.registry import HOOKS, MODELS, DefaultScope
from torch import nn

import ssn_plugins
from ssn_plugins import SparseSwitchNorm2d, SwitchNorm2d, is_switch_norm
from ssn_plugins.engine import radius_at

NAMES = {'SN': 'SwitchNorm2d', 'SN1d': 'SwitchNorm1d', 'SN3d': 'SwitchNorm3d', 'SSN': 'SparseSwitchNorm2d',
         'SSN1d': 'SparseSwitchNorm1d', 'SSN3d': 'SparseSwitchNorm3d'}

#: The logits' optimizer settings of the released recipe (README documents this snippet).
PARAMWISE_CFG = dict(custom_keys={'mean_weight': dict(lr_mult=0.1, decay_mult=0.0),
                                  'var_weight': dict(lr_mult=0.1, decay_mult=0.0)})


@pytest.mark.parametrize('scope', [None, 'mmdet', 'mmseg'])
@pytest.mark.parametrize('name', list(NAMES))
def test_build_norm_layer_from_every_scope(scope, name):
    import mmdet.registry  # noqa: F401  (make the child registries exist)
    import mmseg.registry  # noqa: F401
    with DefaultScope.overwrite_default_scope(scope):
        abbr, layer = build_norm_layer(dict(type=name, requires_grad=True), 64)
    assert abbr == 'sn' and type(layer).__name__ == NAMES[name]
    assert layer.num_features == 64


def test_registered_in_root_and_visible_from_children():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    assert MODELS.get('SSN') is SparseSwitchNorm2d
    assert DET_MODELS.get('SSN') is SparseSwitchNorm2d and SEG_MODELS.get('SN') is SwitchNorm2d
    assert HOOKS.get('SSNRadiusHook') is ssn_plugins.SSNRadiusHook


def test_requires_grad_false_freezes_everything_and_typos_fail():
    _, layer = build_norm_layer(dict(type='SSN', requires_grad=False), 8, postfix=3)
    assert not any(p.requires_grad for p in layer.parameters())
    with pytest.raises(TypeError):
        build_norm_layer(dict(type='SSN', momentun=0.1), 8)


def test_not_a_batchnorm_so_mmengine_leaves_it_alone():
    from mmengine.model import revert_sync_batchnorm
    layer = SparseSwitchNorm2d(4)
    assert not isinstance(layer, nn.modules.batchnorm._BatchNorm)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), layer)
    assert revert_sync_batchnorm(model)[1] is layer


def _mmdet_resnet(depth=50, **kwargs):
    from mmdet.models.backbones import ResNet
    return ResNet(depth=depth, norm_cfg=dict(type='SSN', requires_grad=True), **kwargs)


def test_mmdet_resnet50_keys_forward_backward():
    model = _mmdet_resnet(50)
    keys = model.state_dict().keys()
    for key in ('sn1.weight', 'sn1.mean_weight', 'sn1.radius', 'layer1.0.sn1.var_weight', 'layer1.0.sn3.running_var',
                'layer1.0.downsample.1.mean_choice', 'layer4.2.sn3.bias'):
        assert key in keys, key
    assert sum(is_switch_norm(m) for m in model.modules()) == 53
    model.init_weights()
    assert torch.equal(model.layer1[0].sn3.weight, torch.zeros(256))  # zero_init_residual
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]
    sum(o.mean() for o in outs).backward()
    assert torch.isfinite(model.sn1.mean_weight.grad).all() and model.sn1.mean_weight.grad.abs().sum() > 0


def test_mmseg_resnet_keys():
    from mmseg.models.backbones import ResNet
    model = ResNet(depth=18, norm_cfg=dict(type='SN', requires_grad=True), strides=(1, 2, 1, 1),
                   dilations=(1, 1, 2, 4))
    assert 'layer2.0.downsample.1.mean_weight' in model.state_dict()
    outs = model(torch.randn(2, 3, 32, 32))
    assert outs[-1].shape == (2, 512, 4, 4)


def test_norm_eval_keeps_switch_norms_in_eval():
    from ssn_plugins import apply_norm_eval
    model = _mmdet_resnet(18, norm_eval=True)
    model.train()
    assert model.layer2[0].sn1.training  # mmdet only evals _BatchNorm itself
    assert apply_norm_eval(model) == sum(is_switch_norm(m) for m in model.modules())
    assert not any(m.training for m in model.modules() if is_switch_norm(m))
    running = model.layer2[0].sn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.layer2[0].sn1.running_mean, running)
    # norm_eval=False leaves them training
    other = _mmdet_resnet(18, norm_eval=False)
    other.train()
    assert apply_norm_eval(other) == 0


def test_paramwise_cfg_gives_logits_lower_lr_and_no_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SparseSwitchNorm2d(4))
    wrapper = build_optim_wrapper(model, dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
                                              paramwise_cfg=PARAMWISE_CFG))
    by_param = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    for name, param in model.named_parameters():
        group = by_param[id(param)]
        if name.endswith(('mean_weight', 'var_weight')):
            assert group['lr'] == pytest.approx(0.002) and group['weight_decay'] == 0
        else:
            assert group['lr'] == pytest.approx(0.02) and group['weight_decay'] == pytest.approx(1e-4)


def test_radius_schedule():
    assert radius_at(0, 1.0, 0, 100) == 0
    assert radius_at(50, 1.0, 0, 100) == pytest.approx(0.5)
    assert radius_at(150, 1.0, 0, 100) == 1.0
    assert radius_at(5, 0.8, 10, 20) == 0 and radius_at(15, 0.8, 10, 20) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        ssn_plugins.SSNRadiusHook(max_radius=-1)


def _toy_runner(tmp_path, max_iters, hooks):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.norm = SparseSwitchNorm2d(4)
            self.head = nn.Linear(4, 1)

        def forward(self, inputs, labels=None, mode='tensor'):
            feats = self.norm(self.conv(inputs)).mean((2, 3))
            out = self.head(feats).squeeze(1)
            if mode == 'loss':
                return {'loss': ((out - labels)**2).mean()}
            return out

    g = torch.Generator().manual_seed(0)
    data = [dict(inputs=torch.randn(3, 8, 8, generator=g), labels=torch.randn((), generator=g)) for _ in range(16)]
    return Runner(model=Toy(), work_dir=str(tmp_path),
                  train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                                        batch_size=4, collate_fn=dict(type='default_collate')),
                  train_cfg=dict(by_epoch=False, max_iters=max_iters),
                  optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, weight_decay=1e-4), paramwise_cfg=PARAMWISE_CFG),
                  custom_hooks=hooks, default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1000)),
                  randomness=dict(seed=0), default_scope=None)


def test_runner_iteration_moves_the_radius(tmp_path):
    runner = _toy_runner(tmp_path, 4, [dict(type='SSNRadiusHook', max_radius=1.0)])
    assert float(runner.model.norm.radius) == 0
    runner.train()
    # the last iteration (index 3 of 4) ran with r = 3/4
    assert float(runner.model.norm.radius) == pytest.approx(0.75)
    assert runner.message_hub.get_scalar('train/ssn_radius').current() == pytest.approx(0.75)


def test_logit_clip_hook_clips_only_the_logits_jointly(tmp_path):
    from mmengine.hooks import Hook
    seen = []

    # a torch.compile earlier in the process: on torch 2.1 it stops optimizers' step hooks
    torch.compile(lambda x: x + 1, backend='eager')(torch.ones(1))

    class Recorder(Hook):
        """Wraps the step before SwitchNormLogitClipHook does, so it sees the clipped gradients."""

        def before_train(self, runner):
            model = runner.model
            optimizer = runner.optim_wrapper.optimizer
            step = optimizer.step

            def record_then_step(*args, **kwargs):
                logits = torch.cat([model.norm.mean_weight.grad, model.norm.var_weight.grad])
                seen.append((float(logits.norm()), float(model.conv.weight.grad.norm())))
                return step(*args, **kwargs)

            optimizer.step = record_then_step

    runner = _toy_runner(tmp_path, 3, [dict(type='SwitchNormLogitClipHook', max_norm=1e-4)])
    runner.register_hook(Recorder(), priority='HIGHEST')
    runner.train()
    assert len(seen) == 3
    for logit_norm, conv_norm in seen:
        assert logit_norm <= 1e-4 * (1 + 1e-5)
        assert conv_norm > 1e-3  # other parameters are not clipped
    assert runner.message_hub.get_scalar('train/ssn_logit_grad_norm').current() > 1e-4
    assert 'step' not in runner.optim_wrapper.optimizer.__dict__ or \
        runner.optim_wrapper.optimizer.step.__name__ == 'record_then_step'  # ours is removed


def test_logit_clip_hook_keeps_its_old_name():
    """Configs written before the rename (type='SSNLogitClipHook') build the same hook."""
    assert HOOKS.get('SSNLogitClipHook') is HOOKS.get('SwitchNormLogitClipHook') is ssn_plugins.SwitchNormLogitClipHook
    assert ssn_plugins.SSNLogitClipHook is ssn_plugins.SwitchNormLogitClipHook
    hook = HOOKS.build(dict(type='SSNLogitClipHook', max_norm=0.5))
    assert type(hook) is ssn_plugins.SwitchNormLogitClipHook and hook.max_norm == 0.5


def test_logit_clip_hook_needs_switch_norm_layers(tmp_path):
    runner = _toy_runner(tmp_path, 1, [dict(type='SwitchNormLogitClipHook')])
    runner.model.norm = nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match='no SN/SSN layer'):
        runner.train()
    with pytest.raises(ValueError, match='max_norm'):
        ssn_plugins.SwitchNormLogitClipHook(max_norm=0)
