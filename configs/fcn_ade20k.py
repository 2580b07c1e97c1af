"""FCN baseline for configs/encnet_ade20k.py: mmseg FCN, ResNet-101-D8 (V1c stem), ADE20K, 512x512, 160k.

Target: mmseg configs/fcn/fcn_r101-d8_4xb4-160k_ade20k-512x512.py, 39.91 mIoU single-scale (41.40 ms+flip),
mean over classes present. The protocol is the EncNet run's (see configs/encnet_ade20k.py, including what is not
reproduced yet); the head is mmseg's FCNHead: two 3x3 convs 2048 -> 512, concat with the input, a third 3x3 conv,
Dropout2d 0.1, 1x1 classifier; auxiliary FCN head 0.4.
"""
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'fcn_ade20k'
  config.data.name = 'ade20k'
  config.data.base_size = 2048
  config.data.base_short_side = 512
  config.data.ratio_range = (0.5, 2.0)
  config.data.crop_size = (512, 512)
  config.data.eval_size = (2048, 2048)
  config.data.image_pad_value = (124, 116, 104)
  config.data.cat_max_ratio = 0.75
  config.data.photometric_distortion = True
  config.data.eval_scale = (2048, 512)
  config.data.eval_label_size = (2048, 2048)

  config.model.name = 'fcn'
  config.model.backbone.depth = 101
  config.model.backbone.stem = 'v1c'
  config.model.backbone.output_stride = 8
  config.model.head.channels = 512
  config.model.head.num_convs = 2
  config.model.head.concat_input = True
  config.model.head.dropout = 0.1
  config.model.head.dropout_mode = 'channel'
  config.model.aux_head.enabled = True
  config.model.aux_head.channels = 256
  config.model.aux_head.dropout = 0.1

  config.loss.ce_reduction = 'all'
  config.loss.aux_weight = 0.4

  config.train.batch_size = 16
  config.train.steps = 160_000
  config.train.eval_every = 16_000
  config.train.checkpoint_every = 4_000

  config.optim.lr = 0.01
  config.optim.head_lr_mult = 1.0
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.end_lr = 1e-4

  config.eval.batch_size = 8
  config.eval.miou_convention = 'present'
  return config
