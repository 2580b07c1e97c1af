"""Demo baseline: configs/demo_classification.py without the Context Encoding Modules, the same 14-layer network
(width 16), data and budget otherwise.

python -m ctxseg_jax.main --config configs/demo_classification_baseline.py --workdir runs/demo_classification_baseline
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'demo_classification_baseline'
  protocols.synthetic_classification_demo(config, num_codes=0)
  return config
