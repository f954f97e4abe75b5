# DeepLabV3+ R-50-D8 with SSN in the backbone, the DepthwiseSeparableASPPHead
# (image pool, depthwise and pointwise convs, low-level bottleneck) and the FCN
# auxiliary head.
# The backbone, with the released SSN stem pool: ./r50-ssn-d8.py.
_base_ = ['mmseg::_base_/models/deeplabv3plus_r50-d8.py', './r50-ssn-d8.py']
norm_cfg = _base_.ssn_norm_cfg
model = _base_.ssn_d8_model
