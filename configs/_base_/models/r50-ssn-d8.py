# What the three SSN segmentation model bases (pspnet, deeplabv3, deeplabv3plus
# _r50-ssn-d8.py) put over mmseg's R-50-D8 model: SSN in the backbone, the
# decode head and the FCN auxiliary head.
# The backbone is mmseg's ResNet with the 7x7 stem (not the default ResNetV1c
# deep stem) and the released SSN stem pool (padding 0, ceil_mode), so the
# released ImageNet SSN ResNet-50 v1 fits and computes what it computed on
# ImageNet; dilations and strides stay D8.
# Named apart (a base may not repeat a key of mmseg's base): a model base says
# `norm_cfg = _base_.ssn_norm_cfg` and `model = _base_.ssn_d8_model`.
ssn_norm_cfg = dict(type='SSN', requires_grad=True)
ssn_d8_model = dict(
    pretrained=None,
    backbone=dict(
        type='ResNetReleasedStem',
        depth=50,
        norm_cfg=ssn_norm_cfg,
        norm_eval=False,
        # ImageNet SSN ResNet-50 v1, converted with tools/convert_checkpoint.py.
        init_cfg=dict(type='SwitchNormPretrained', checkpoint='checkpoints/resnet50_v1_ssn.pth')),
    decode_head=dict(norm_cfg=ssn_norm_cfg),
    auxiliary_head=dict(norm_cfg=ssn_norm_cfg))
