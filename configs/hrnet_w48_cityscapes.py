"""HRNetV2p-W48 baseline (FCN head on the concatenated stages), Cityscapes 19 classes, 512x1024 crops, 160k
iterations: the mmseg protocol. The baseline of configs/ocrnet_hr48_cityscapes_mmseg.py: only the heads differ.

Target: mmseg configs/hrnet/fcn_hr48_4xb2-160k_cityscapes-512x1024.py, 80.65 mIoU single-scale (81.92 ms+flip),
mean over classes present. (mmseg's 40k schedule gives 78.48, the HRNet number in Contextrast's tables.)

Protocol: 4 GPUs x 2 images, SyncBN, SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9 to 1e-4; cross-entropy over all
pixels, no auxiliary loss; mmseg's augmentation (see configs/ocrnet_hr48_cityscapes_mmseg.py); whole-image test.
Model: HRNetV2p-W48 (fusion upsampling align_corners False); FCNHead on the four branches resized to stride 4 and
concatenated (720 channels): 1x1 ConvModule 720 -> 720, no dropout, 1x1 classifier.

Not yet reproduced here: the ImageNet-pretrained weights (open-mmlab://msra/hrnetv2_w48; config.model.pretrained).

python -m ctxseg_jax.main --config configs/hrnet_w48_cityscapes.py --config.data.root=/data/cityscapes
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'hrnet_w48_cityscapes'
  protocols.hrnet_v2_head(config, protocols.mmseg_hrnet_cityscapes_160k(config), width=48)
  return config
