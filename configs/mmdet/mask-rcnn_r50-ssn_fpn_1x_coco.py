# Mask R-CNN R-50-FPN, SSN everywhere a norm exists, COCO, 1x schedule
# (the same data, schedule and runtime as mmdet's mask-rcnn_r50_fpn_1x_coco.py).
# Needs checkpoints/resnet50_v1_ssn.pth: see tools/convert_checkpoint.py.
_base_ = [
    '../_base_/models/mask-rcnn_r50-ssn_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/ssn_runtime.py',
]
# The switching logits learn at a tenth of the learning rate, without weight
# decay (the released recipe).
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        'mean_weight': dict(lr_mult=0.1, decay_mult=0.0),
        'var_weight': dict(lr_mult=0.1, decay_mult=0.0),
    }))
