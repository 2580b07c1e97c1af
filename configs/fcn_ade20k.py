"""FCN baseline for configs/encnet_ade20k.py: mmseg FCN, ResNet-101-D8 (V1c stem), ADE20K, 512x512, 160k.

Target: mmseg configs/fcn/fcn_r101-d8_4xb4-160k_ade20k-512x512.py, 39.91 mIoU single-scale (41.40 ms+flip),
mean over classes present. The protocol is the EncNet run's (see configs/encnet_ade20k.py, including what is not
reproduced yet); the head is mmseg's FCNHead: two 3x3 convs 2048 -> 512, concat with the input, a third 3x3 conv,
Dropout2d 0.1, 1x1 classifier; auxiliary FCN head 0.4.
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'fcn_ade20k'
  shared = protocols.mmseg_ade20k_160k(config)
  models.set_head(config.model, 'decode_head', HEADS.config('fcn', reads=(3,), num_convs=2,
                                                               concat_input=True, **shared))
  return config
