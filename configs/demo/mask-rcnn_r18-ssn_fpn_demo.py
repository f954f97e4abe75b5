# Mask R-CNN, ResNet-18 + FPN with SSN in backbone, FPN and mask head, trained
# from scratch on the synthetic shapes (ssn_plugins.demo) on CPU in minutes.
# A half-width ResNet-18 (base_channels=32) and slim heads (64-channel features,
# 256-wide FCs, 200 proposals, 64 sampled RoIs) at 128x128: mmdet's default
# heads cost 4-5 s/iter on 2 CPU cores whatever the image size.
# Data: python tools/make_demo_data.py data/ssn_demo   (or `make demo`).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)

data_root = 'data/ssn_demo/'
classes = ('square', 'circle', 'triangle')
image_size = 128
max_iters = 2000
ssn = dict(type='SSN')

model = dict(
    backbone=dict(depth=18, base_channels=32, norm_cfg=ssn, norm_eval=False, frozen_stages=-1,
                  init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64, norm_cfg=ssn),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=len(classes),
                       norm_cfg=ssn)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=400, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=400, max_per_img=200),
        rcnn=dict(max_per_img=50)))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes),
        ann_file='annotations/instances_train.json', data_prefix=dict(img='images/train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    dataset=dict(
        type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes),
        ann_file='annotations/instances_val.json', data_prefix=dict(img='images/val/'),
        test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json',
                     metric=['bbox', 'segm'], format_only=False, backend_args=backend_args)
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
# From scratch: warm up, then step down at 75% and 90% of training.  The SSN
# logits keep the full learning rate (no decay) in this short schedule; the
# released ImageNet recipe uses lr_mult=0.1 over 100 epochs.
# SummaryOptimWrapperConstructor: one log line on the logits' options, not one per parameter.
optim_wrapper = dict(
    constructor='SummaryOptimWrapperConstructor',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2),
    paramwise_cfg=dict(custom_keys={'mean_weight': dict(decay_mult=0.),
                                    'var_weight': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.75), int(max_iters * 0.9)], gamma=0.1)
]
# The radius grows from 0 to 1 over training: every layer is one-hot (latched)
# after ~82% of the iterations.
custom_hooks = [
    dict(type='SSNRadiusHook'),
    dict(type='SwitchNormMonitorHook'),  # radius, latched share, entropy in the log
    dict(type='SafeCheckpointHook'),
]
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=4)
