"""DeepLabV3, ResNet-101-D8 (V1c stem), Cityscapes 19 classes, 512x1024 crops, 80k iterations: the mmseg protocol.

Target: mmseg configs/deeplabv3/deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.py, 80.20 mIoU single-scale (81.21
ms+flip), mean over classes present. (Its 40k schedule gives 77.12, the DeepLabV3 number of Contextrast's tables:
`--config.train.steps=40000`.)

Protocol: that of configs/encnet_cityscapes.py (4 GPUs x 2 images, SyncBN, SGD lr 0.01, momentum 0.9, wd 5e-4,
poly 0.9 to 1e-4; cross-entropy over all pixels, auxiliary FCN head on stage 3 weighted 0.4; mmseg's augmentation;
whole-image test).
Model: ResNetV1c-101 with dilations (1, 1, 2, 4); ASPPHead on stage 4: image pooling, a 1x1 and three 3x3 atrous
branches (dilations 12, 24, 36), each a ConvModule 2048 -> 512, a 3x3 bottleneck 2560 -> 512, Dropout2d 0.1,
1x1 classifier.

Not yet reproduced here: the ImageNet-pretrained weights (open-mmlab://resnet101_v1c; config.model.pretrained).

python -m ctxseg_jax.main --config configs/deeplabv3_r101_cityscapes.py --config.data.root=/data/cityscapes
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'deeplabv3_r101_cityscapes'
  shared = protocols.mmseg_cityscapes_80k(config)
  models.set_head(config.model, 'decode_head', HEADS.config('aspp', reads=(3,), dilations=(1, 12, 24, 36), **shared))
  return config
