# What the SyncSSN segmentation leaves put over their SSN leaf: every SSN layer
# synchronized (backbone, decode head, auxiliary head), so each BN branch pools
# the batch of all GPUs as SyncBN does in mmseg's own configs.
# Named apart (a base may not repeat a key of the SSN leaf): a leaf says
# `norm_cfg = _base_.syncssn_norm_cfg` and `model = _base_.syncssn_d8_model`.
syncssn_norm_cfg = dict(type='SyncSSN')
syncssn_d8_model = dict(
    backbone=dict(norm_cfg=syncssn_norm_cfg),
    decode_head=dict(norm_cfg=syncssn_norm_cfg),
    auxiliary_head=dict(norm_cfg=syncssn_norm_cfg))
