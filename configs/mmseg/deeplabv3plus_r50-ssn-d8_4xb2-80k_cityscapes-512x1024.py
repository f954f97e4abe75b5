# deeplabv3plus R-50-D8 with SSN, Cityscapes, 80k iterations (the same data, schedule and
# runtime as mmseg's deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024.py).
# Needs checkpoints/resnet50_v1_ssn.pth: see tools/convert_checkpoint.py.
_base_ = [
    '../_base_/models/deeplabv3plus_r50-ssn-d8.py',
    'mmseg::_base_/datasets/cityscapes.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
    '../_base_/ssn_runtime.py',
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
# the released recipe for the switching logits (lr x 0.1, no weight decay),
# from ../_base_/sn_runtime.py
optim_wrapper = _base_.switch_norm_optim_wrapper
