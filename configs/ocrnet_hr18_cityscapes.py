"""OCRNet, HRNetV2p-W18, Cityscapes 19 classes, 512x1024 crops, 160k iterations: the mmseg protocol and head.

Target: mmseg configs/ocrnet/ocrnet_hr18_4xb2-160k_cityscapes-512x1024.py, 79.47 mIoU single-scale (80.91
ms+flip), mean over classes present.

Protocol: that of configs/ocrnet_hr48_cityscapes_mmseg.py (4 GPUs x 2 images, SGD lr 0.01, poly to 1e-4, CE over
all pixels on the OCR logits 1.0 and the soft-region logits 0.4, mmseg's augmentation, whole-image test).
Model: HRNetV2p-W18 (18 + 36 + 72 + 144 = 270 concatenated channels); FCNHead (1x1 ConvModule 270 -> 270) publishing
the soft regions; OCRHead 512 wide with 256 key channels, no dropout.

Not yet reproduced here: the ImageNet-pretrained weights (open-mmlab://msra/hrnetv2_w18; config.model.pretrained).

python -m ctxseg_jax.main --config configs/ocrnet_hr18_cityscapes.py --config.data.root=/data/cityscapes
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'ocrnet_hr18_cityscapes'
  stages = protocols.mmseg_hrnet_cityscapes_160k(config, width=18)
  protocols.ocr_on_hrnet(config, stages, width=18, flavour='mmseg')
  return config
