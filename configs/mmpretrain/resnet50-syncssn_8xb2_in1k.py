# ResNet-50 v1 with SyncSSN, ImageNet-1k, 8 GPUs x 2 images: the (8,2) recipe
# (resnet50-ssn_8xb2_in1k.py, lr 0.00625) with each BN branch pooling the 16
# images of all GPUs instead of 2.
_base_ = './resnet50-ssn_8xb2_in1k.py'
model = dict(backbone=dict(norm_cfg=dict(type='SyncSSN', momentum=0.003)))
