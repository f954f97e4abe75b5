# ResNet-101 v1 with SSN, ImageNet-1k, 8 GPUs x 32 images, 100 epochs: the
# ResNet-50 SSN recipe unchanged (resnet50-ssn_8xb32_in1k.py says where it
# follows and where it differs from the release). No ResNet-101 SSN model was
# ever released (Sparse_SwitchNorm issue #4); the released SN ResNet-101 v1
# reached 78.54 top-1 with a 120-epoch warm-up + cosine schedule.
_base_ = './resnet50-ssn_8xb32_in1k.py'
model = dict(backbone=dict(depth=101))
