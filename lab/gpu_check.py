"""Checks that need a CUDA device, behind ``tools/gpu_check.py``.

CI has no GPU, so what the CPU counters of :mod:`.profiling` predict is
confirmed here when a device is lent:

- no host sync inside the SN/SSN layers of a Mask R-CNN training step
  (``torch.cuda.set_sync_debug_mode('error')`` while a layer runs, forward
  and backward, after a warm-up step), and how often the whole step syncs
  (``'warn'`` mode: mmdet's own heads sync, which is not ours to fix);
- the same step under AMP: fp16 autocast with ``GradScaler``, and bf16;
  loss and gradients finite;
- speed: SN/SSN layers against BatchNorm2d and GroupNorm(32) on the
  ResNet-50 norm shapes, and a Mask R-CNN demo iteration with SSN against
  BN (CUDA events, warm-up, medians).

Importing this module needs no CUDA; :func:`require_cuda` is the gate.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import warnings
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from . import benchmark
from ssn_plugins.compat import grad_scaler
from ssn_plugins.demo.run import DEMO_CONFIG
from ssn_plugins.norm import is_switch_norm

__all__ = ['NO_CUDA_MESSAGE', 'require_cuda', 'sync_errors_in_switch_norms', 'sync_check',
           'amp_check', 'cuda_times', 'layer_times', 'iteration_times', 'run_checks', 'passed',
           'format_table']

NO_CUDA_MESSAGE = ('gpu_check needs a CUDA device, and torch.cuda.is_available() is False here: '
                   'nothing was checked. Run it on a machine with a GPU and a CUDA build of torch '
                   'and mmcv.')
_DEMO_CLASSES = 3  # the demo config's num_classes


def require_cuda() -> None:
    """Exit (``SystemExit`` with :data:`NO_CUDA_MESSAGE`) unless CUDA is available."""
    if not torch.cuda.is_available():
        raise SystemExit(NO_CUDA_MESSAGE)


class _SetSyncModeInBackward(torch.autograd.Function):
    """Identity (a copy, so later in-place ops are allowed) whose backward sets the sync mode."""

    @staticmethod
    def forward(ctx, x: Tensor, mode: str) -> Tensor:
        ctx.mode = mode
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        torch.cuda.set_sync_debug_mode(ctx.mode)
        return grad, None


@contextlib.contextmanager
def sync_errors_in_switch_norms(model: nn.Module) -> Iterator[None]:
    """Raise on any CUDA sync while an SN/SSN layer of ``model`` runs, forward or backward.

    Forward: module pre/post hooks switch ``sync_debug_mode`` to ``'error'``
    and back.  Backward: the hooks also pass the layer's input and output
    through an identity whose backward switches it on (output side, when the
    gradient reaches the layer) and off (input side, when the layer's
    backward is done).  The autograd engine may run another branch's node in
    between; the error's traceback names the op.
    """
    handles = []

    def pre_hook(module, args):
        if torch.is_grad_enabled() and args[0].requires_grad:
            args = (_SetSyncModeInBackward.apply(args[0], 'default'), *args[1:])
        torch.cuda.set_sync_debug_mode('error')
        return args

    def post_hook(module, args, output):
        torch.cuda.set_sync_debug_mode('default')
        if torch.is_grad_enabled() and output.requires_grad:
            return _SetSyncModeInBackward.apply(output, 'error')
        return output

    for module in model.modules():
        if is_switch_norm(module):
            handles += [module.register_forward_pre_hook(pre_hook),
                        module.register_forward_hook(post_hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.cuda.set_sync_debug_mode('default')


def _demo_model(config: str, norm: Optional[dict] = None) -> nn.Module:
    return benchmark.build_model(config, 'mmdet', norm).cuda().train()


def _first_line(err: BaseException) -> str:
    return f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'


#: Latched choices cycled over the SSN layers for the latched sync check: every code path.
LATCHED_MIX = (('bn', 'bn'), ('in', 'bn'), ('ln', 'ln'), ('in', 'in'), ('bn', 'ln'))


def sync_check(config: str = DEMO_CONFIG, batch: int = 2, size: int = 128,
               latched: bool = False) -> dict:
    """A Mask R-CNN training step with no sync allowed inside the SN/SSN layers.

    ``latched``: every SSN layer latched first (cycling :data:`LATCHED_MIX`),
    else free, as at the start of training.  Returns ``passed`` (and
    ``error``: the first sync's message) and ``step_syncs``: the syncs
    ``'warn'`` mode reports for the whole step (data on the device already),
    with ``in_switch_norm_files``: those whose Python location is an
    ``ssn_plugins`` file.
    """
    torch.manual_seed(0)
    model = _demo_model(config)
    if latched:
        benchmark.settle(model, LATCHED_MIX)
    data = benchmark.det_batch(model, benchmark.det_inputs(batch, size, _DEMO_CLASSES))
    benchmark.det_loss(model, data).backward()  # warm-up: caches, first-call work
    model.zero_grad(set_to_none=True)
    result = dict(passed=True, error=None)
    try:
        with sync_errors_in_switch_norms(model):
            benchmark.det_loss(model, data).backward()
        torch.cuda.synchronize()
    except RuntimeError as err:
        result.update(passed=False, error=_first_line(err))
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            benchmark.det_loss(model, data).backward()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    syncs = [w for w in caught if 'synchroniz' in str(w.message)]
    result['step_syncs'] = len(syncs)
    result['in_switch_norm_files'] = sum('ssn_plugins' in w.filename for w in syncs)
    return result


def _grads_finite(model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.stack([g.float().isfinite().all() for g in grads]).all())


def amp_check(dtype: torch.dtype, config: str = DEMO_CONFIG, batch: int = 2, size: int = 128,
              steps: int = 3) -> dict:
    """``steps`` SGD steps of the demo model under autocast(``dtype``): loss and grads finite.

    fp16 uses ``GradScaler``; a step it skips (inf/NaN gradients at the
    current scale) is counted in ``skipped`` and is not a failure, but the
    last step's unscaled gradients must be finite.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f'dtype must be torch.float16 or torch.bfloat16, got {dtype}')
    torch.manual_seed(0)
    model = _demo_model(config)
    data = benchmark.det_batch(model, benchmark.det_inputs(batch, size, _DEMO_CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = grad_scaler('cuda', enabled=dtype == torch.float16)
    losses, skipped, grads_finite = [], 0, False
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast('cuda', dtype=dtype):
            loss = benchmark.det_loss(model, data)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads_finite = _grads_finite(model)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped += scaler.is_enabled() and scaler.get_scale() < scale
        losses.append(float(loss))
    finite = all(math.isfinite(loss) for loss in losses)
    return dict(passed=finite and grads_finite, losses=losses, skipped=int(skipped),
                grads_finite=grads_finite)


def cuda_times(fn: Callable[[], object], repeats: int = 20, warmup: int = 5) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn``, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def layer_times(batches: Sequence[int] = (2, 8),
                shapes: Sequence[tuple[int, int]] = tuple(benchmark.RESNET50_NORM_SHAPES),
                latched: Sequence[str] = ('bn', 'in-bn'), repeats: int = 20,
                warmup: int = 5) -> list[dict]:
    """Median train fwd+bwd ms of BN2d, GroupNorm(32) and the SN/SSN kinds, per shape."""
    records = []
    for n in batches:
        for c, h in shapes:
            x = torch.randn(n, c, h, h, device='cuda', requires_grad=True)
            grad = torch.randn_like(x)
            layers = dict(benchmark.layer_kinds(c, latched), gn=nn.GroupNorm(32, c))
            medians = {}
            for name, layer in layers.items():
                layer.cuda().train()

                def step(layer=layer):
                    x.grad = None
                    layer(x).backward(grad)

                medians[name] = statistics.median(cuda_times(step, repeats, warmup))
            records.append(dict(shape=[n, c, h, h], median_ms=medians))
    return records


def iteration_times(config: str = DEMO_CONFIG, batch: int = 2, size: int = 128,
                    repeats: int = 10, warmup: int = 3) -> dict:
    """Median ms of one demo Mask R-CNN SGD iteration with SSN (free and latched on
    (BN, BN)), BN and GroupNorm(32)."""
    torch.manual_seed(0)
    models = {'ssn': _demo_model(config),
              'ssn_latched_bn': benchmark.settle(_demo_model(config), [('bn', 'bn')]),
              'bn': _demo_model(config, dict(type='BN', requires_grad=True)),
              'gn': _demo_model(config, dict(type='GN', num_groups=32, requires_grad=True))}
    data = benchmark.det_inputs(batch, size, _DEMO_CLASSES)
    medians = {}
    for name, model in models.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        model_data = benchmark.det_batch(model, data)

        def step(model=model, optimizer=optimizer, model_data=model_data):
            optimizer.zero_grad(set_to_none=True)
            benchmark.det_loss(model, model_data).backward()
            optimizer.step()

        medians[name] = statistics.median(cuda_times(step, repeats, warmup))
    return dict(input=[batch, 3, size, size], median_ms=medians)


def _attempt(fn: Callable[[], dict]) -> dict:
    """``fn()``, or a failed record naming the error (one broken check must not hide the rest)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - reported, the other checks still run
        return dict(passed=False, error=_first_line(err))


def run_checks(config: str = DEMO_CONFIG, batches: Sequence[int] = (2, 8),
               shapes: Sequence[tuple[int, int]] = tuple(benchmark.RESNET50_NORM_SHAPES),
               repeats: int = 20, size: int = 128,
               log: Optional[Callable[[str], None]] = None) -> dict:
    """Every check; the report :func:`format_table` prints and ``--out`` writes as JSON."""
    require_cuda()
    log = log or (lambda message: None)
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, config=config)
    for key, latched in (('sync', False), ('sync_latched', True)):
        log(f'{key} check')
        report[key] = _attempt(lambda latched=latched: sync_check(config, size=size, latched=latched))
    for name, dtype in (('fp16', torch.float16), ('bf16', torch.bfloat16)):
        log(f'AMP {name}')
        report[f'amp_{name}'] = _attempt(lambda dtype=dtype: amp_check(dtype, config, size=size))
    log('layer timing')
    report['layers'] = layer_times(batches, shapes, repeats=repeats)
    log('iteration timing')
    report['iteration'] = iteration_times(config, size=size, repeats=max(repeats // 2, 1))
    return report


def passed(report: dict) -> bool:
    """True when the sync and AMP checks all passed (timings are not pass/fail)."""
    return all(report[key]['passed'] for key in ('sync', 'sync_latched', 'amp_fp16', 'amp_bf16'))


def _verdict(check: dict, detail: str) -> str:
    if check.get('error'):
        return f'FAIL ({check["error"]})'
    return ('pass' if check['passed'] else 'FAIL') + (f' ({detail})' if detail else '')


def format_table(report: dict) -> str:
    """One markdown table: the checks, then time ratios (medians over shapes)."""
    lines = [f'GPU check on {report["device"]}, torch {report["torch"]}', '',
             '| check | result |', '|---|---|']
    for key, state in (('sync', 'free'), ('sync_latched', 'latched')):
        sync = report[key]
        lines.append(f'| no sync inside SN/SSN layers ({state}), train step (sync_debug_mode '
                     f'error) | {_verdict(sync, "")} |')
        if 'step_syncs' in sync:
            lines.append(f'| syncs in the whole Mask R-CNN step ({state}, warn mode) / in '
                         f'ssn_plugins files | {sync["step_syncs"]} / {sync["in_switch_norm_files"]} |')
    for name in ('fp16', 'bf16'):
        amp = report[f'amp_{name}']
        detail = '' if 'losses' not in amp else (
            f'losses {", ".join(f"{v:.3f}" for v in amp["losses"])}; '
            f'{amp["skipped"]} skipped steps')
        scaler = ' + GradScaler' if name == 'fp16' else ''
        lines.append(f'| AMP {name}{scaler}: loss and grads finite | {_verdict(amp, detail)} |')
    layers = report.get('layers')
    if layers:
        for kind in layers[0]['median_ms']:
            if kind in ('bn', 'gn'):
                continue
            to_bn = statistics.median(r['median_ms'][kind] / r['median_ms']['bn'] for r in layers)
            to_gn = statistics.median(r['median_ms'][kind] / r['median_ms']['gn'] for r in layers)
            lines.append(f'| layer train fwd+bwd, {kind}: time / BN2d, / GN(32) | '
                         f'{to_bn:.2f}x, {to_gn:.2f}x |')
    iteration = report.get('iteration')
    if iteration:
        ms = iteration['median_ms']
        for kind, value in ms.items():
            lines.append(f'| Mask R-CNN demo iteration {tuple(iteration["input"])}, {kind} | '
                         f'{value:.1f} ms ({value / ms["bn"]:.2f}x BN) |')
    return '\n'.join(lines)
