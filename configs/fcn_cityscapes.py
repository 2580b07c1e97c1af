"""FCN baseline for configs/encnet_cityscapes.py: mmseg FCN, ResNet-101-D8 (V1c stem), Cityscapes, 512x1024, 80k.

Target: mmseg configs/fcn/fcn_r101-d8_4xb2-80k_cityscapes-512x1024.py, 75.13 mIoU single-scale (75.94
ms+flip), mean over classes present. The protocol is the EncNet run's (see configs/encnet_cityscapes.py,
including what is not reproduced yet); the head is mmseg's FCNHead: two 3x3 convs 2048 -> 512, concat with the
input, a third 3x3 conv, Dropout2d 0.1, 1x1 classifier; auxiliary FCN head 0.4.
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'fcn_cityscapes'
  shared = protocols.mmseg_cityscapes_80k(config)
  models.set_head(config.model, 'decode_head', HEADS.config('fcn', reads=(3,), num_convs=2,
                                                               concat_input=True, **shared))
  return config
