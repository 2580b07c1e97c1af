"""Demo: a linear probe of the demo's backbone, a 1x1 classifier on all four stages resized to the finest and
concatenated (HRNet-style head input), with the same data, backbone, auxiliary head and budget as configs/demo.py.

python -m ctxseg_jax.main --config configs/demo_linear.py --workdir runs/demo_linear
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'demo_linear'
  protocols.synthetic_demo(config)
  models.set_head(config.model, 'decode_head', HEADS.config('linear', reads=(0, 1, 2, 3),
                                                               input_transform='resize_concat'))
  return config
