# Shared by every SSN config: the SN runtime (plugin import, optimizer recipe
# for the logits) with SSN's hooks: grow the SparsestMax radius from 0 to 1.0
# over training (the released recipe, so every layer ends one-hot), clip the
# logits' gradient norm to 1.0 (also released), honour norm_eval=True for SSN,
# and log radius, latched share and ratio entropy.
_base_ = './sn_runtime.py'
custom_hooks = [
    dict(type='SSNRadiusHook', max_radius=1.0),
    # the logits' joint gradient norm clipped to 1.0, as in the released recipe
    dict(type='SwitchNormLogitClipHook', max_norm=1.0),
    dict(type='SwitchNormEvalHook'),
    dict(type='SwitchNormMonitorHook'),
    # Runner checkpoints that load under torch's weights_only=True, also with
    # mmdet's/mmseg's own tools/train.py and tools/test.py
    dict(type='SafeCheckpointHook'),
    # names any BN/SyncBN/GN layer a norm_cfg missed, before training starts
    dict(type='LeftoverNormHook'),
]
