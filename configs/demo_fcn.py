"""Demo baseline: an FCN on a small dilated ResNet-18, trained on the built-in synthetic context dataset (CPU
friendly). The same data, backbone and budget as configs/demo.py (EncNet): only the model differs.

python -m ctxseg_jax.main --config configs/demo_fcn.py --workdir runs/demo_fcn
"""
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'demo_fcn'
  config.data.name = 'synthetic_context'
  config.data.synthetic.image_size = 96
  config.data.synthetic.num_train = 2000
  config.data.synthetic.num_val = 200
  config.data.base_size = 96
  config.data.ratio_range = (0.75, 1.5)
  config.data.crop_size = (96, 96)
  config.data.eval_size = (96, 96)
  config.data.worker_count = 1

  config.model.name = 'fcn'
  config.model.backbone.depth = 18
  config.model.backbone.stem = 'v1c'
  config.model.backbone.base_width = 16
  config.model.head.channels = 64
  config.model.aux_head.channels = 32

  config.optim.lr = 0.04
  config.optim.weight_decay = 1e-4
  config.optim.head_lr_mult = 1.0

  config.train.steps = 1200
  config.train.batch_size = 16
  config.train.log_every = 100
  config.train.eval_every = 400
  config.train.checkpoint_every = 200
  config.eval.batch_size = 40
  return config
