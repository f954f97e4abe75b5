# PSPNet R-50-D8 with SyncSSN, ADE20K, 80k iterations: the SSN config below with
# every SSN layer synchronized, so each BN branch pools the batch of all GPUs (4 x 4 images) as
# SyncBN does in mmseg's own configs.  Launch with tools/dist_train.sh CONFIG 4.
_base_ = ['./pspnet_r50-ssn-d8_4xb4-80k_ade20k-512x512.py', '../_base_/models/r50-syncssn-d8.py']
norm_cfg = _base_.syncssn_norm_cfg
model = _base_.syncssn_d8_model
