# FCN, ResNet-18 (V1b, dilated) with SSN everywhere, on the label maps of the
# synthetic shapes (ssn_plugins.demo): background + 3 shape classes.
# Data: python tools/make_demo_data.py data/ssn_demo
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py', 'mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)

data_root = 'data/ssn_demo/'
classes = ('background', 'square', 'circle', 'triangle')
palette = [[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0]]
image_size = 192
max_iters = 1000
ssn = dict(type='SSN')

data_preprocessor = dict(size=(image_size, image_size))
# dropout off: the model is then deterministic, so an interrupted run resumes exactly
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(type='ResNet', depth=18, norm_cfg=ssn, norm_eval=False, init_cfg=None),
    decode_head=dict(in_channels=512, channels=64, num_classes=len(classes), norm_cfg=ssn,
                     dropout_ratio=0.0),
    auxiliary_head=dict(in_channels=256, channels=32, num_classes=len(classes), norm_cfg=ssn,
                        dropout_ratio=0.0))

dataset = dict(type='BaseSegDataset', data_root=data_root,
               metainfo=dict(classes=classes, palette=palette),
               img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs')
]
test_pipeline = train_pipeline
train_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, data_prefix=dict(img_path='images/train', seg_map_path='masks/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=1, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix=dict(img_path='images/val', seg_map_path='masks/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(type='OptimWrapper', constructor='SummaryOptimWrapperConstructor',
                     optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4),
                     paramwise_cfg=dict(custom_keys={'mean_weight': dict(decay_mult=0.),
                                                     'var_weight': dict(decay_mult=0.)}))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters,
                        by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
custom_hooks = [
    dict(type='SSNRadiusHook'),
    dict(type='SwitchNormMonitorHook'),  # radius, latched share, entropy in the log
    dict(type='SafeCheckpointHook'),
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
