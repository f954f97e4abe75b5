# ResNet-50 v1 with SyncSSN, ImageNet-1k, 8 GPUs x 32 images: the SSN recipe
# with each BN branch pooling the batch of all GPUs (256 images). The released
# SSN models were trained without synchronisation (per-GPU BN statistics).
# Launch with tools/dist_train.sh CONFIG 8 (on one process it is plain SSN).
_base_ = './resnet50-ssn_8xb32_in1k.py'
model = dict(backbone=dict(norm_cfg=dict(type='SyncSSN', momentum=0.003)))
