"""Conv folding: an eval-mode BatchNorm folded into the convolution right before it."""
from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ['fold_conv_bn']

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_conv_bn(module: nn.Module) -> int:
    """Fold every eval-mode BN into the conv registered right before it; returns how many.

    Like mmcv's ``fuse_conv_bn`` (the BN becomes ``nn.Identity``), but it also
    takes Conv1d/Conv3d and BN without affine (torch's ``fuse_conv_bn_eval``),
    only pairs *adjacent* children with matching channels, and skips a
    ``ConvModule`` whose norm runs before its conv (``order=('norm', 'conv', ...)``).
    Like mmcv's, it trusts registration order to be data-flow order (true for
    mmdet/mmseg ResNets, ConvModule, FPN and the heads; check custom modules).
    """
    folded = 0
    previous_name, previous = None, None
    order = getattr(module, 'order', None)
    norm_first = isinstance(order, tuple) and 'norm' in order and 'conv' in order and \
        order.index('norm') < order.index('conv')
    for name, child in list(module.named_children()):
        if (isinstance(child, nn.modules.batchnorm._BatchNorm) and isinstance(previous, _CONV)
                and not norm_first and child.track_running_stats and child.running_mean is not None
                and previous.out_channels == child.num_features and not child.training
                and not previous.training):
            module._modules[previous_name] = fuse_conv_bn_eval(previous, child)
            module._modules[name] = nn.Identity()
            folded += 1
            previous_name, previous = None, None
            continue
        folded += fold_conv_bn(child)
        previous_name, previous = name, child
    return folded
