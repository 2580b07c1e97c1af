"""Demo: EncNet for image classification (the CIFAR-10 network of configs/encnet_cifar10.py at width 16, a Context
Encoding Module with 8 codewords and EncDrop in every block) on the built-in synthetic classification set, whose
class (boat, car, buoy, sign) is an object's kind in its scene: the objects of a sea and a city scene look the same,
only the band of water or road tells them apart (CPU friendly). configs/demo_classification_baseline.py is the same
network, data and budget without the modules.

python -m ctxseg_jax.main --config configs/demo_classification.py --workdir runs/demo_classification
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'demo_classification'
  protocols.synthetic_classification_demo(config, num_codes=8)
  return config
