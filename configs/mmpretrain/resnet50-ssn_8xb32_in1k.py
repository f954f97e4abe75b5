# ResNet-50 v1 with SSN in every norm layer, ImageNet-1k, 8 GPUs x 32 images,
# 100 epochs: the released SSN recipe (Sparse_SwitchNorm train_imagenet.py,
# 77.25 top-1 at (8,32)) on mmpretrain's resnet/resnet50_8xb32_in1k.py.
#   python tools/train.py configs/mmpretrain/resnet50-ssn_8xb32_in1k.py      (1 GPU)
#   bash tools/dist_train.sh configs/mmpretrain/resnet50-ssn_8xb32_in1k.py 8
# then python tools/convert_checkpoint.py work_dirs/.../epoch_100.pth checkpoints/resnet50_v1_ssn.pth
#
# As released: SGD lr 0.1 for 256 images, momentum 0.9, weight decay 1e-4;
# 100 epochs, lr x0.1 at epochs 30, 60 and 90; no warm-up; no label
# smoothing (plain cross entropy); the SSN logits at lr x0.1 without weight
# decay, their joint gradient norm clipped to 1.0 (SSNLogitClipHook); the
# SparsestMax radius growing linearly from 0 to 1 by iteration (SSNRadiusHook);
# the last norm of each block starts at gamma 0 (released last_gamma=True,
# mmpretrain zero_init_residual=True); the stem max-pool with padding 0 and
# ceil_mode (ResNetReleasedStem); running statistics kept at 0.997 per step
# (the released momentum convention; PyTorch momentum 0.003); the last 5
# epochs train on Resize(256) + RandomCrop(224) + flip instead of
# RandomResizedCrop (SwitchRecipeHook); evaluation Resize(256) + CenterCrop(224).
# Differs from the release: no Dropout(0.5) before the classifier (mmpretrain's
# LinearClsHead has none), and no colour jitter / PCA lighting in training
# (their strengths are not recorded in the release); mmengine's
# DistributedDataParallel instead of the released hand-written gradient
# all-reduce (same arithmetic).
_base_ = [
    'mmpretrain::_base_/models/resnet50.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    'mmpretrain::_base_/schedules/imagenet_bs256.py',
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/ssn_runtime.py',
]
# no top-level norm_cfg: it would not reach the model, and would survive as 'SSN' in the
# SyncSSN children
model = dict(backbone=dict(type='ResNetReleasedStem', norm_cfg=dict(type='SSN', momentum=0.003),
                           zero_init_residual=True))
# The switching logits learn at a tenth of the learning rate, without weight
# decay (the released recipe, kept in ../_base_/sn_runtime.py).
optim_wrapper = _base_.switch_norm_optim_wrapper
# the released last-5-epoch pipeline (action_epoch is 1-based: epochs 96..100)
final_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short'),
    dict(type='RandomCrop', crop_size=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
custom_hooks = _base_.custom_hooks + [
    dict(type='SwitchRecipeHook', schedule=[dict(action_epoch=96, train_pipeline=final_pipeline)]),
]
