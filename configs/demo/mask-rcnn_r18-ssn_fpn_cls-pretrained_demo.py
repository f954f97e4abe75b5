# The Mask R-CNN demo with its backbone initialised from the classification
# demo (resnet18-ssn_shapes-cls_demo.py): the same half-width ResNet-18, loaded
# strictly by SwitchNormPretrained from the converted classifier checkpoint:
#   python tools/train.py configs/demo/resnet18-ssn_shapes-cls_demo.py --work-dir work_dirs/cls_demo
#   python tools/convert_checkpoint.py work_dirs/cls_demo/iter_600.pth checkpoints/r18_half_ssn_shapes.pth
#   python tools/train.py configs/demo/mask-rcnn_r18-ssn_fpn_cls-pretrained_demo.py
# SSN layers the classifier latched stay latched; the others go on growing
# their radius with the detector's schedule (SSNRadiusHook).
_base_ = './mask-rcnn_r18-ssn_fpn_demo.py'
model = dict(
    backbone=dict(init_cfg=dict(_delete_=True, type='SwitchNormPretrained',
                                checkpoint='checkpoints/r18_half_ssn_shapes.pth')))
