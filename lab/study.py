"""The paper's small-batch claim in miniature: BN, GN, SN and SSN at 1, 2 and 8 images per process.

:func:`run_study` trains the segmentation demo model (FCN on a dilated
ResNet-18 of a quarter width, ``configs/demo/fcn_r18-ssn_demo.py`` slimmed) from
scratch on the shapes data with varied appearance (per-image brightness,
contrast and colour cast; textured, cluttered backgrounds), once per norm,
batch size and seed, through mmengine's ``Runner`` as ``tools/train.py``
does.  Every run sees the same number of images; the learning rate scales
linearly with the batch.  Each trained model is evaluated on val with
mmseg's ``IoUMetric`` in eval mode, so BN (and the BN branch of SN/SSN)
normalizes with its running statistics.

Writes ``study.json`` (the setting and one record per run; rewritten whole
after every run, and a rerun with the same setting skips the runs it holds)
and ``study.png`` (mIoU against images per process, error bars over seeds).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os.path as osp
import time
import uuid
from typing import Callable, Sequence

from mmengine.config import Config

from ssn_plugins.engine import launch
from ssn_plugins.fileio import check_destination, replacing
from ssn_plugins.mim import config_path
from ssn_plugins.demo.shapes import make_demo_dataset

__all__ = ['NORMS', 'BATCHES', 'StudySetting', 'FULL', 'QUICK', 'gn_groups', 'study_config',
           'choice_shares', 'run_one', 'run_study', 'summarize', 'format_table', 'plot_study']

SEG_DEMO_CONFIG = config_path('demo/fcn_r18-ssn_demo.py')
NORMS = ('BN', 'GN', 'SN', 'SSN')
BATCHES = (1, 2, 8)
_SHOWN = ('IN', 'LN', 'BN')


@dataclasses.dataclass(frozen=True)
class StudySetting:
    """What every run of a study shares.

    Args:
        images: images seen by every run; a run at batch ``b`` trains
            ``images // b`` iterations.
        num_train, num_val, size: the shapes data set (``size`` x ``size``).
        width: ResNet-18 base width (64 is the standard network, 32 the
            half-width one of the detection demo; 16 fits the CPU budget).
        lr: SGD learning rate at ``reference_batch`` images per process;
            a run at batch ``b`` uses ``lr * b / reference_batch``.
        data_seed: seed of the data set (the run seeds are 0, 1, ...).
    """

    images: int
    num_train: int = 400
    num_val: int = 100
    size: int = 64
    width: int = 16
    lr: float = 0.05
    reference_batch: int = 8
    data_seed: int = 0

    def __post_init__(self) -> None:
        for name in ('images', 'num_train', 'num_val', 'width', 'reference_batch'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        if not self.lr > 0:
            raise ValueError(f'lr must be > 0, got {self.lr!r}')


FULL = StudySetting(images=1600)
QUICK = StudySetting(images=640, num_train=200, num_val=50)


def gn_groups(width: int, groups: int = 32) -> int:
    """GroupNorm's group count: ``groups``, or the nearest divisor of ``width`` below it.

    Every normalized layer of the study model has a multiple of ``width``
    channels, so one count fits all of them.
    """
    return max(g for g in range(1, min(groups, width) + 1) if width % g == 0)


def _norm_cfg(norm: str, width: int) -> dict:
    if norm == 'BN':
        return dict(type='BN', requires_grad=True)
    if norm == 'GN':
        return dict(type='GN', num_groups=gn_groups(width), requires_grad=True)
    if norm in ('SN', 'SSN'):
        return dict(type=norm)
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')


@functools.lru_cache(maxsize=1)
def _demo_config() -> Config:
    # read once: resolving the mmseg:: bases reads mmseg's model index, seconds per call
    return launch.load_config(SEG_DEMO_CONFIG)


@functools.lru_cache(maxsize=1)
def _logit_recipe() -> dict:
    # the released recipe for the switching logits, as every shipped SN/SSN config has it
    return Config.fromfile(config_path('_base_/sn_runtime.py')).switch_norm_optim_wrapper.to_dict()


def study_config(norm: str, batch: int, seed: int, setting: StudySetting, data_root: str,
                 work_dir: str) -> Config:
    """The demo FCN config for one run: ``norm`` everywhere, ``batch`` images per process.

    ResNet-18 of base width ``setting.width`` (V1c stem, D8) with 2*width- and width-channel heads
    at ``setting.size``; SGD with ``setting.lr`` scaled linearly with the
    batch, poly decay over ``setting.images // batch`` iterations; the
    released SN/SSN recipe for the switching logits (a tenth of the learning
    rate, no weight decay, gradient norm clipped to 1.0), the SparsestMax
    radius growing to 1 for SSN; no checkpoints, no validation during training.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f'batch must be a positive int, got {batch!r}')
    iters = setting.images // batch
    if iters < 1:
        raise ValueError(f'setting.images ({setting.images}) must be >= batch ({batch})')
    norm_cfg = _norm_cfg(norm, setting.width)
    w, size = setting.width, (setting.size, setting.size)
    cfg = copy.deepcopy(_demo_config())
    cfg.work_dir = work_dir
    cfg.data_preprocessor.size = size
    cfg.model.data_preprocessor.size = size
    cfg.model.backbone.update(base_channels=w, stem_channels=2 * w, norm_cfg=norm_cfg)
    cfg.model.decode_head.update(in_channels=8 * w, channels=2 * w, norm_cfg=norm_cfg)
    cfg.model.auxiliary_head.update(in_channels=4 * w, channels=w, norm_cfg=norm_cfg)
    data_root = data_root.rstrip('/') + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
        cfg[loader].num_workers = 0  # in-process loading: no worker per run on a busy CPU
        cfg[loader].persistent_workers = False
    cfg.train_dataloader.batch_size = batch
    cfg.val_dataloader.batch_size = 8  # eval mode: the batch does not change the result
    cfg.optim_wrapper.optimizer.lr = setting.lr * batch / setting.reference_batch
    cfg.optim_wrapper.update(copy.deepcopy(_logit_recipe()))  # no SN/SSN logits: no effect
    cfg.param_scheduler = [dict(type='PolyLR', eta_min=1e-4 * batch / setting.reference_batch,
                                power=0.9, begin=0, end=iters, by_epoch=False)]
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'SafeCheckpointHook']
    if norm in ('SN', 'SSN'):
        hooks.append(dict(type='SwitchNormLogitClipHook', max_norm=1.0))
    if norm == 'SSN':
        hooks.append(dict(type='SSNRadiusHook', max_radius=1.0))
    cfg.custom_hooks = hooks
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = max(iters // 10, 1)
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=seed)
    # a fresh name: mmengine keeps one logger and message hub per experiment name
    cfg.experiment_name = f'study_{norm}_b{batch}_s{seed}_{uuid.uuid4().hex[:8]}'
    # the Runner prints and dumps its config five times; yapf formatting costs seconds each
    return Config(cfg.to_dict(), filename=cfg.filename, format_python_code=False)


def choice_shares(records: Sequence[dict]) -> dict:
    """Share of SN/SSN layers whose largest mean / variance ratio is IN, LN or BN.

    For SSN, whose layers end one-hot, that is the share of layers that chose
    each normalizer; ``records`` come from :func:`ssn_plugins.analysis.collect_ratios`.
    """
    if not records:
        raise ValueError('no SN/SSN layer records')
    out = {}
    for which in ('mean', 'var'):
        counts = dict.fromkeys(_SHOWN, 0)
        for r in records:
            ratios = dict(zip(r['normalizers'], r[which]))
            counts[max(ratios, key=ratios.get).upper()] += 1
        out[which] = {k: v / len(records) for k, v in counts.items()}
    return out


def run_one(norm: str, batch: int, seed: int, setting: StudySetting, data_root: str,
            work_dir: str) -> dict:
    """Train and evaluate one model; returns its record for ``study.json``."""
    from ssn_plugins.analysis import collect_ratios

    cfg = study_config(norm, batch, seed, setting, data_root, work_dir)
    start = time.time()
    runner = launch.train(cfg)
    train_seconds = time.time() - start
    metrics = runner.val()  # runner.model is in eval mode here: running statistics
    eval_seconds = time.time() - start - train_seconds
    record = dict(norm=norm, batch=batch, seed=seed, iters=cfg.train_cfg.max_iters,
                  images=cfg.train_cfg.max_iters * batch, lr=cfg.optim_wrapper.optimizer.lr,
                  mIoU=float(metrics['mIoU']), mAcc=float(metrics['mAcc']),
                  aAcc=float(metrics['aAcc']),
                  final_loss=float(runner.message_hub.get_scalar('train/loss').current()),
                  train_seconds=round(train_seconds, 1),
                  eval_seconds=round(eval_seconds, 1), shares=None, latched=None)
    if norm in ('SN', 'SSN'):
        layers = collect_ratios(runner.model)
        record['shares'] = choice_shares(layers)
        record['latched'] = sum(r['latched'] for r in layers) / len(layers)
    return record


def _write_json(path: str, obj) -> None:
    with replacing(path) as (tmp, ):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)


def _study_error(path: str, problem: str) -> ValueError:
    return ValueError(f'{path} {problem}: it is not a study this tool wrote; remove it to start '
                      f'again, or pass another --out')


def _check_record(path: str, i: int, r) -> None:
    """``ValueError`` naming ``path`` and record ``i`` if it lacks what the table and plot read."""
    if not isinstance(r, dict):
        raise _study_error(path, f'has record {i} that is a {type(r).__name__}, not an object')
    for key, kind in (('norm', str), ('batch', int), ('seed', int), ('mIoU', (int, float))):
        if key not in r:
            raise _study_error(path, f'has record {i} without {key!r}')
        if isinstance(r[key], bool) or not isinstance(r[key], kind):
            raise _study_error(path, f'has record {i} whose {key!r} is {r[key]!r}')
    shares = r.get('shares')
    if shares is not None and not (
            isinstance(shares, dict) and all(
                isinstance(shares.get(w), dict) and all(
                    isinstance(shares[w].get(k), (int, float)) for k in _SHOWN) for w in ('mean', 'var'))):
        raise _study_error(path, f'has record {i} whose shares are not {{mean, var}} x {_SHOWN} numbers')


def _load_done(path: str, setting: StudySetting) -> list[dict]:
    """The records of an earlier run of this study, all checked before any training."""
    if not osp.lexists(path):
        return []
    try:
        with open(path, encoding='utf-8') as f:
            old = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise _study_error(path, f'cannot be read as JSON ({type(err).__name__}: {err})') from err
    if not isinstance(old, dict) or not isinstance(old.get('setting'), dict) \
            or not isinstance(old.get('records'), list):
        raise _study_error(path, "is not an object with a 'setting' object and a 'records' list")
    if old['setting'] != dataclasses.asdict(setting):
        raise ValueError(f'{path} holds a study with another setting ({old["setting"]}); '
                         f'pass another --out, or remove it to start again')
    for i, record in enumerate(old['records']):
        _check_record(path, i, record)
    return old['records']


def run_study(out: str, setting: StudySetting = FULL, seeds: int = 2,
              norms: Sequence[str] = NORMS, batches: Sequence[int] = BATCHES,
              log: Callable[[str], None] = print) -> list[dict]:
    """Every (norm, batch, seed) run under ``out``; returns the records.

    Writes ``out/data`` (the varied shapes), ``out/study.json`` after every
    run, ``out/study.png`` at the end, and logs the table.  Runs already in
    ``out/study.json`` (same setting) are kept, not repeated.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f'seeds must be a positive int, got {seeds!r}')
    for norm in norms:
        _norm_cfg(norm, setting.width)
    out = osp.abspath(out)
    json_path, png_path = osp.join(out, 'study.json'), osp.join(out, 'study.png')
    for path in (json_path, png_path):
        check_destination(path)  # before the data and the first run
    records = _load_done(json_path, setting)
    done = {(r['norm'], r['batch'], r['seed']) for r in records}
    data_root = osp.join(out, 'data')
    make_demo_dataset(data_root, setting.num_train, setting.num_val, setting.size,
                      setting.data_seed, varied=True)
    todo = [(n, b, s) for s in range(seeds) for b in batches for n in norms if (n, b, s) not in done]
    start = time.time()
    for i, (norm, batch, seed) in enumerate(todo):
        work_dir = osp.join(out, 'work_dirs', f'{norm.lower()}_b{batch}_s{seed}')
        record = run_one(norm, batch, seed, setting, data_root, work_dir)
        records.append(record)
        _write_json(json_path, dict(setting=dataclasses.asdict(setting), records=records))
        elapsed = time.time() - start
        log(f'[{i + 1}/{len(todo)}] {norm:<3} batch {batch} seed {seed}: mIoU {record["mIoU"]:5.1f}  '
            f'({record["iters"]} iters, {record["train_seconds"]:.0f} s; '
            f'{elapsed / 60:.1f} min so far)')
    plot_study(records, png_path)
    log(format_table(records))
    return records


def summarize(records: Sequence[dict]) -> dict:
    """``{(norm, batch): (mean mIoU, std over seeds, number of seeds)}``; std 0 for one seed."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r['norm'], r['batch']), []).append(r['mIoU'])
    out = {}
    for key, values in groups.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = (mean, std, len(values))
    return out


def _order(records: Sequence[dict]) -> tuple[list[str], list[int]]:
    norms = [n for n in NORMS if any(r['norm'] == n for r in records)]
    norms += sorted({r['norm'] for r in records} - set(norms))
    return norms, sorted({r['batch'] for r in records})


def format_table(records: Sequence[dict]) -> str:
    """mIoU (mean ± std over seeds) per norm and images per process, and SSN's choices per batch."""
    stats = summarize(records)
    norms, batches = _order(records)
    seeds = max(n for _, _, n in stats.values())
    lines = [f'val mIoU (%), mean ± std over {seeds} seed(s), by images per process',
             f'{"norm":<5}' + ''.join(f'{b:>14}' for b in batches)]
    for norm in norms:
        cells = []
        for b in batches:
            mean, std, _ = stats.get((norm, b), (float('nan'), float('nan'), 0))
            cells.append(f'{mean:6.1f} ± {std:4.1f}'.rjust(14))
        lines.append(f'{norm:<5}' + ''.join(cells))
    for norm in ('SSN', 'SN'):
        rows = [r for r in records if r['norm'] == norm and r['shares']]
        if not rows:
            continue
        what = 'layers choosing' if norm == 'SSN' else 'layers whose largest ratio is'
        lines.append(f'\n{norm}: share of {what} IN / LN / BN, averaged over seeds')
        for b in batches:
            picked = [r for r in rows if r['batch'] == b]
            if picked:
                cells = '   '.join(
                    f'{which} ' + ' / '.join(f'{sum(r["shares"][which][k] for r in picked) / len(picked):.2f}'
                                            for k in _SHOWN)
                    for which in ('mean', 'var'))
                lines.append(f'  batch {b}: {cells}')
    return '\n'.join(lines)


def plot_study(records: Sequence[dict], path: str) -> str:
    """mIoU against images per process, one line per norm, error bars: std over seeds."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    stats = summarize(records)
    norms, batches = _order(records)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for norm in norms:
        xs = [b for b in batches if (norm, b) in stats]
        ax.errorbar(xs, [stats[norm, b][0] for b in xs], yerr=[stats[norm, b][1] for b in xs],
                    marker='o', capsize=3, label=norm)
    ax.set_xscale('log', base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel('images per process')
    ax.set_ylabel('val mIoU (%)')
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    with replacing(path) as (tmp, ):
        fig.savefig(tmp, dpi=100, format='png')
    plt.close(fig)
    return path
