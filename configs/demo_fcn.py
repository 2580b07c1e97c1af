"""Demo baseline: an FCN on a small dilated ResNet-18, trained on the built-in synthetic context dataset (CPU
friendly). The same data, backbone and budget as configs/demo.py (EncNet): only the model differs.

python -m ctxseg_jax.main --config configs/demo_fcn.py --workdir runs/demo_fcn
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'demo_fcn'
  shared = protocols.synthetic_demo(config)
  models.set_head(config.model, 'decode_head', HEADS.config('fcn', reads=(3,), num_convs=2,
                                                               concat_input=True, **shared))
  return config
