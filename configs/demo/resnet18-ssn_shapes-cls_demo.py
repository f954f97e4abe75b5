# Classify the shapes of the demo data (square, circle, triangle) with the
# Mask R-CNN demo's backbone: mmpretrain's ResNet-18 at half width
# (stem_channels=base_channels=32), SSN in every norm layer, from scratch on
# CPU in minutes. Its backbone has exactly the keys and shapes of the backbone
# in mask-rcnn_r18-ssn_fpn_demo.py (mmdet's ResNet(depth=18, base_channels=32)),
# so a trained checkpoint converts with tools/convert_checkpoint.py and loads
# there with init_cfg=dict(type='SwitchNormPretrained', checkpoint=...).
# Data: python tools/make_demo_data.py data/ssn_demo   (writes cls/{train,val}).
#   python tools/train.py configs/demo/resnet18-ssn_shapes-cls_demo.py
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/ssn_runtime.py',
]
data_root = 'data/ssn_demo/'
classes = ('square', 'circle', 'triangle')
max_iters = 600
ssn = dict(type='SSN')

data_preprocessor = dict(
    num_classes=len(classes),
    # the normalisation of the Mask R-CNN demo (mmdet's DetDataPreprocessor), RGB
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    backbone=dict(depth=18, stem_channels=32, base_channels=32, norm_cfg=ssn, norm_eval=False,
                  frozen_stages=-1, zero_init_residual=False, init_cfg=None),
    head=dict(num_classes=len(classes), in_channels=256, topk=(1, )))

# the crops are square, of side image_size // 2 (64 for the default 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=32, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root=data_root, ann_file='cls/train.txt',
                 data_prefix='cls/train', metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32, num_workers=1, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root=data_root, ann_file='cls/val.txt',
                 data_prefix='cls/val', metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict()
test_cfg = dict()
# The released ImageNet recipe in short: SGD momentum 0.9, wd 1e-4, lr x0.1 at
# 30/60/90 % of training, logits at lr x0.1 without weight decay (and clipped
# by SwitchNormLogitClipHook from ssn_runtime); a short warm-up for the from-scratch start.
optim_wrapper = _base_.switch_norm_optim_wrapper
optim_wrapper.update(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * f) for f in (0.3, 0.6, 0.9)], gamma=0.1),
]
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=32)
