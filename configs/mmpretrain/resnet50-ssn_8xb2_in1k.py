# ResNet-50 v1 with SSN, ImageNet-1k, 8 GPUs x 2 images (the paper's (8,2)
# setting, released model 75.85 top-1): the (8,32) recipe with the learning
# rate scaled linearly with the batch, 0.1 x 16 / 256 = 0.00625, as the
# released small-batch SN runs did ((8,4): 0.0125, (8,1): 0.003125). Same 100
# epochs, so 16x the iterations (8.0M); the radius still grows by iteration.
# With 2 images per GPU the BN branch sees 2 images: SSN usually drops it; see
# resnet50-syncssn_8xb2_in1k.py for a BN branch pooled over all 8 GPUs.
_base_ = './resnet50-ssn_8xb32_in1k.py'
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=0.1 * 8 * 2 / 256))
