# Shared by every SN config: register ssn_plugins' layers and hooks, honour
# norm_eval=True for SN and log the entropy of the (softmax) ratios. SN has no
# radius, so there is no SSNRadiusHook here.
custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)
custom_hooks = [
    dict(type='SwitchNormEvalHook'),
    dict(type='SwitchNormMonitorHook'),
    # Runner checkpoints that load under torch's weights_only=True, also with
    # mmdet's/mmseg's own tools/train.py and tools/test.py
    dict(type='SafeCheckpointHook'),
]
