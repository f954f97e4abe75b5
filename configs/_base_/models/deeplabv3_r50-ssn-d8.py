# DeepLabV3 R-50-D8 with SSN in the backbone, the ASPPHead (1x1 image-pool
# branch included) and the FCN auxiliary head.
# type='ResNet' (7x7 stem), not mmseg's default ResNetV1c deep stem, so the
# released ImageNet SSN ResNet-50 v1 fits; dilations and strides stay D8.
_base_ = 'mmseg::_base_/models/deeplabv3_r50-d8.py'
norm_cfg = dict(type='SSN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(
        type='ResNet',
        depth=50,
        norm_cfg=norm_cfg,
        norm_eval=False,
        # ImageNet SSN ResNet-50 v1, converted with tools/convert_checkpoint.py.
        init_cfg=dict(type='SwitchNormPretrained', checkpoint='checkpoints/resnet50_v1_ssn.pth')),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
