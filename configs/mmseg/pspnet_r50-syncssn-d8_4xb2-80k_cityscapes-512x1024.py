# PSPNet R-50-D8 with SyncSSN, Cityscapes, 80k iterations: the SSN config below with
# every SSN layer synchronized, so each BN branch pools the batch of all GPUs (4 x 2 images) as
# SyncBN does in mmseg's own configs.  Launch with tools/dist_train.sh CONFIG 4.
_base_ = ['./pspnet_r50-ssn-d8_4xb2-80k_cityscapes-512x1024.py', '../_base_/models/r50-syncssn-d8.py']
norm_cfg = _base_.syncssn_norm_cfg
model = _base_.syncssn_d8_model
