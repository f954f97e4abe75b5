# Mask R-CNN R-50-FPN with SSN in the backbone, FPN, 4conv1fc box head and mask
# head (mmdet's GN-all recipe, configs/gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py).
# Stem and first stage stay frozen as in the released detection recipe
# (Detectron FREEZE_AT=2); every other SSN layer trains, in train mode.
# ResNetReleasedStem is mmdet's ResNet with the released SSN stem pool
# (padding 0, ceil_mode), so the ImageNet weights see the windows they learned on.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
norm_cfg = dict(type='SSN', requires_grad=True)
model = dict(
    backbone=dict(
        type='ResNetReleasedStem',
        depth=50,
        frozen_stages=1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        # ImageNet SSN ResNet-50 v1, converted with tools/convert_checkpoint.py.
        init_cfg=dict(type='SwitchNormPretrained', checkpoint='checkpoints/resnet50_v1_ssn.pth')),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
