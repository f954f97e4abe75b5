# Shared by every SSN config: register ssn_plugins' layers and hooks, grow the
# SparsestMax radius from 0 to 1.0 over training (the released recipe, so every
# layer ends one-hot), clip the logits' gradient norm to 1.0 (also released),
# honour norm_eval=True for SSN, and log radius, latched share and ratio entropy.
custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)
custom_hooks = [
    dict(type='SSNRadiusHook', max_radius=1.0),
    # the logits' joint gradient norm clipped to 1.0, as in the released recipe
    dict(type='SwitchNormLogitClipHook', max_norm=1.0),
    dict(type='SwitchNormEvalHook'),
    dict(type='SwitchNormMonitorHook'),
    # Runner checkpoints that load under torch's weights_only=True, also with
    # mmdet's/mmseg's own tools/train.py and tools/test.py
    dict(type='SafeCheckpointHook'),
]
