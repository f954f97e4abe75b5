# Mask R-CNN R-50-FPN with SyncSSN, COCO, 2x schedule: the SSN config below with every
# SSN layer synchronized, so each BN branch pools the batch of all GPUs (8x2 images).
# Launch with tools/dist_train.sh CONFIG 8.
_base_ = './mask-rcnn_r50-ssn_fpn_2x_coco.py'
norm_cfg = dict(type='SyncSSN')
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))
