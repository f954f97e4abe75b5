# Mask R-CNN R-50-FPN, SN everywhere a norm exists, COCO, 2x schedule
# (the same data, schedule and runtime as mmdet's mask-rcnn_r50_fpn_2x_coco.py).
# Needs checkpoints/resnet50_v1_sn.pth: see tools/convert_checkpoint.py.
_base_ = [
    '../_base_/models/mask-rcnn_r50-sn_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_2x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/sn_runtime.py',
]
# the released recipe for the switching logits (lr x 0.1, no weight decay),
# from ../_base_/sn_runtime.py
optim_wrapper = _base_.switch_norm_optim_wrapper
