# Shared by every SN config (and, through ssn_runtime.py, every SSN config):
# register ssn_plugins' layers and hooks, honour norm_eval=True for SN and log
# the entropy of the (softmax) ratios. SN has no radius, so there is no
# SSNRadiusHook here.
custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)
custom_hooks = [
    dict(type='SwitchNormEvalHook'),
    dict(type='SwitchNormMonitorHook'),
    # Runner checkpoints that load under torch's weights_only=True, also with
    # mmdet's/mmseg's own tools/train.py and tools/test.py
    dict(type='SafeCheckpointHook'),
    # names any BN/SyncBN/GN layer a norm_cfg missed, before training starts
    dict(type='LeftoverNormHook'),
]
# The released recipe for the switching logits: a tenth of the learning rate,
# no weight decay; the log gets one line on it instead of one per parameter.
# mmengine refuses a key that two sibling bases both set, and the schedule
# base sets optim_wrapper, so a leaf config merges this into its schedule's:
#     optim_wrapper = _base_.switch_norm_optim_wrapper
switch_norm_optim_wrapper = dict(
    constructor='SummaryOptimWrapperConstructor',
    paramwise_cfg=dict(custom_keys={
        'mean_weight': dict(lr_mult=0.1, decay_mult=0.0),
        'var_weight': dict(lr_mult=0.1, decay_mult=0.0),
    }))
