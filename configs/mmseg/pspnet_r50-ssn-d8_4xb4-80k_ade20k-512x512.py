# pspnet R-50-D8 with SSN, ADE20K, 80k iterations (the same data, schedule and
# runtime as mmseg's pspnet_r50-d8_4xb4-80k_ade20k-512x512.py).
# Needs checkpoints/resnet50_v1_ssn.pth: see tools/convert_checkpoint.py.
_base_ = [
    '../_base_/models/pspnet_r50-ssn-d8.py',
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
# The switching logits learn at a tenth of the learning rate, without weight
# decay (the released recipe).
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        'mean_weight': dict(lr_mult=0.1, decay_mult=0.0),
        'var_weight': dict(lr_mult=0.1, decay_mult=0.0),
    }))
