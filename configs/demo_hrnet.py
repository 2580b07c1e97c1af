"""Demo baseline: HRNetV2's segmentation head (1x1 conv-BN-ReLU and a 1x1 classifier on the four branches
concatenated) on a width-16 HRNetV2-W18-Small-v2 topology, trained on the built-in synthetic context dataset (CPU
friendly). The same data, backbone and budget as configs/demo_ocr.py: only the head differs.

python -m ctxseg_jax.main --config configs/demo_hrnet.py --workdir runs/demo_hrnet
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'demo_hrnet'
  protocols.hrnet_v2_head(config, protocols.synthetic_demo_hrnet(config), width=16)
  return config
