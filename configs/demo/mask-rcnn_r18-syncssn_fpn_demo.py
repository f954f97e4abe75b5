# The Mask R-CNN demo with SyncSSN: for tools/dist_train.sh, where the BN branch of
# every layer pools the batches of all processes (IN and LN stay per sample).
#   tools/dist_train.sh configs/demo/mask-rcnn_r18-syncssn_fpn_demo.py 2
# On one process it trains exactly like the SSN demo.
_base_ = './mask-rcnn_r18-ssn_fpn_demo.py'
syncssn = dict(type='SyncSSN')
model = dict(
    backbone=dict(norm_cfg=syncssn),
    neck=dict(norm_cfg=syncssn),
    roi_head=dict(mask_head=dict(norm_cfg=syncssn)))
