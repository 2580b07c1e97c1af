"""A config small enough for tests: a width-8 dilated ResNet-18 FCN on 32x32 synthetic images.

Usable as a config file: python -m ctxseg_jax.main --config tests/tiny_config.py
"""
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'tiny'
  config.data.synthetic.image_size = 32
  config.data.synthetic.num_train = 64
  config.data.synthetic.num_val = 12
  config.data.base_size = 32
  config.data.ratio_range = (0.75, 1.25)
  config.data.crop_size = (32, 32)
  config.data.eval_size = (32, 32)
  config.data.worker_count = 0
  config.model.backbone.depth = 18
  config.model.backbone.base_width = 8
  config.model.head.channels = 16
  config.model.aux_head.channels = 8
  config.optim.lr = 0.01
  config.train.steps = 6
  config.train.batch_size = 8
  config.train.log_every = 2
  config.train.eval_every = 0
  config.train.checkpoint_every = 3
  config.eval.batch_size = 8
  return config
