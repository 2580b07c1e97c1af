"""OCRNet, HRNetV2p-W48, Cityscapes 19 classes, 512x1024 crops, 160k iterations: the mmseg protocol and head.

Target: mmseg configs/ocrnet/ocrnet_hr48_4xb2-160k_cityscapes-512x1024.py, 81.35 mIoU single-scale (82.70
ms+flip), mean over classes present.

Protocol: 4 GPUs x 2 images, SyncBN, SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9 to eta_min 1e-4; cross-entropy
averaged over all pixels on the OCR logits (1.0) and the auxiliary logits (0.4), upsampled with align_corners False;
train rescale (2048, 1024) x U(0.5, 2.0), crop 512x1024 with cat_max_ratio 0.75, flip, PhotoMetricDistortion,
padding with the mean colour; test: the whole 1024x2048 image.
Model (CascadeEncoderDecoder): HRNetV2p-W48 (fusion upsampling align_corners False); FCNHead on the concatenated
stages (1x1 ConvModule 720 -> 720 without bias, no dropout) publishing the soft regions; OCRHead (3x3 ConvModule
720 -> 512 without bias, gather, object attention with 256 channels, 1x1 ConvModule 1024 -> 512, no dropout).

Not yet reproduced here: the ImageNet-pretrained weights (open-mmlab://msra/hrnetv2_w48; config.model.pretrained);
mmseg runs its first head twice per training step (once for its loss, once for the OCR head's input), so its BN
statistics update twice; here it runs once.

python -m ctxseg_jax.main --config configs/ocrnet_hr48_cityscapes_mmseg.py --config.data.root=/data/cityscapes
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'ocrnet_hr48_cityscapes_mmseg'
  stages = protocols.mmseg_hrnet_cityscapes_160k(config)
  protocols.ocr_on_hrnet(config, stages, width=48, flavour='mmseg')
  return config
