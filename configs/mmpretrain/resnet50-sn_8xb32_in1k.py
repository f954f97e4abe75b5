# ResNet-50 v1 with SN in every norm layer, ImageNet-1k, 8 GPUs x 32 images,
# 100 epochs with steps at 30/60/90: the released SN step recipe (76.92 top-1)
# on mmpretrain's resnet/resnet50_8xb32_in1k.py.
#
# As released: SGD lr 0.1 for 256 images, momentum 0.9, weight decay 1e-4,
# no warm-up, no label smoothing, zero-initialised last gamma per block,
# the torchvision stem (max-pool padding 1), and the SN logits trained like
# every other parameter (same lr, weight decay 1e-4, no clipping: the release
# gives the logits no group of their own; lr x0.1 and no decay are the SSN
# recipe). Running statistics at PyTorch momentum 0.1 (the 2019 devkit's 0.9;
# the 2018 code kept 0.997, i.e. 0.003). Differs from the release: no
# Dropout(0.5) before the classifier, no colour jitter / PCA lighting. The
# released SN (8,32) 77.49 model used 120 epochs with warm-up and cosine decay.
_base_ = [
    'mmpretrain::_base_/models/resnet50.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    'mmpretrain::_base_/schedules/imagenet_bs256.py',
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/sn_runtime.py',
]
model = dict(backbone=dict(norm_cfg=dict(type='SN'), zero_init_residual=True))
# the released SN logits are trained like every weight: the schedule's optimizer
# as it is, not the runtime's switch_norm_optim_wrapper (lr x0.1, no decay)
optim_wrapper = dict(constructor='SummaryOptimWrapperConstructor')
