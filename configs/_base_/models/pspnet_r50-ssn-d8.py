# PSPNet R-50-D8 with SSN in the backbone, the PSPHead (1x1 pyramid-pooling
# branch included) and the FCN auxiliary head.
# The backbone is mmseg's ResNet with the 7x7 stem (not the default ResNetV1c
# deep stem) and the released SSN stem pool (padding 0, ceil_mode), so the
# released ImageNet SSN ResNet-50 v1 fits and computes what it computed on
# ImageNet; dilations and strides stay D8.
_base_ = 'mmseg::_base_/models/pspnet_r50-d8.py'
norm_cfg = dict(type='SSN', requires_grad=True)
model = dict(
    pretrained=None,
    backbone=dict(
        type='ResNetReleasedStem',
        depth=50,
        norm_cfg=norm_cfg,
        norm_eval=False,
        # ImageNet SSN ResNet-50 v1, converted with tools/convert_checkpoint.py.
        init_cfg=dict(type='SwitchNormPretrained', checkpoint='checkpoints/resnet50_v1_ssn.pth')),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
