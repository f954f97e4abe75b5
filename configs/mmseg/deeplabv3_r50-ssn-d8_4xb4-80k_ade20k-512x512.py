# deeplabv3 R-50-D8 with SSN, ADE20K, 80k iterations (the same data, schedule and
# runtime as mmseg's deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py).
# Needs checkpoints/resnet50_v1_ssn.pth: see tools/convert_checkpoint.py.
_base_ = [
    '../_base_/models/deeplabv3_r50-ssn-d8.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
    '../_base_/ssn_runtime.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
# the released recipe for the switching logits (lr x 0.1, no weight decay),
# from ../_base_/sn_runtime.py
optim_wrapper = _base_.switch_norm_optim_wrapper
