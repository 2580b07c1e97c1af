"""Demo: EncNet (Context Encoding Module + SE-loss) on a small dilated ResNet-18, trained on the built-in synthetic
context dataset (CPU friendly). configs/demo_fcn.py is the FCN baseline with the same data, backbone and budget.

python -m ctxseg_jax.main --config configs/demo.py --workdir runs/demo
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'demo'
  protocols.synthetic_demo(config)
  config.model.name = 'encnet'
  config.model.encnet.num_codes = 32
  # Without lateral connections: on this data they cost accuracy at this budget (final mIoU 72.78 with
  # --config.model.encnet.lateral=True, 74.85 without; one seed each).
  config.model.encnet.lateral = False
  config.model.encnet.se_head = True
  config.loss.se_weight = 0.2
  return config
