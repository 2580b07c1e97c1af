"""OCRNet on dilated ResNet-101 (V1c stem, output stride 8), Cityscapes 19 classes, 512x1024 crops, 40k iterations:
the mmseg protocol and heads.

Target: mmseg configs/ocrnet/ocrnet_r101-d8_4xb2-40k_cityscapes-512x1024.py, 80.09 mIoU single-scale, mean over
classes present (openseg's OCR R101 at the same schedule: 79.63).

Protocol: 4 GPUs x 2 images, SyncBN, SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9 to 1e-4; cross-entropy over all
pixels on the OCR logits (1.0) and the soft-region logits (0.4); mmseg's augmentation; whole-image test.
Model (CascadeEncoderDecoder): ResNetV1c-101, dilations (1, 1, 2, 4); FCNHead on stage 3 (3x3 ConvModule 1024 ->
256, Dropout2d 0.1, 1x1 classifier) publishing the soft regions, run at inference; OCRHead on stage 4 (3x3
ConvModule 2048 -> 512, object attention with 256 channels, 1x1 ConvModule 1024 -> 512, Dropout2d 0.1).

Not yet reproduced here: the ImageNet-pretrained weights (open-mmlab://resnet101_v1c; config.model.pretrained).

python -m ctxseg_jax.main --config configs/ocrnet_r101_cityscapes.py --config.data.root=/data/cityscapes
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models.heads import HEADS, aux_fcn_head


def get_config():
  config = base_config()
  config.name = 'ocrnet_r101_cityscapes'
  shared = protocols.mmseg_cityscapes_40k(config)
  models.set_head(config.model, 'aux_head', aux_fcn_head(train_only=False, dropout=0.1, dropout_mode='channel'))
  models.set_head(config.model, 'decode_head', HEADS.config(
      'ocr', reads=(3,), reads_outputs=('aux_logits',), key_channels=256, bottleneck_bias=False, **shared))
  return config
