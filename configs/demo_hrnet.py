"""Demo baseline: HRNetV2's segmentation head (1x1 conv-BN-ReLU and a 1x1 classifier on the four branches
concatenated) on a width-16 HRNetV2-W18-Small-v2 topology, trained on the built-in synthetic context dataset (CPU
friendly). The same data, backbone and budget as configs/demo_ocr.py: only the head differs.

python -m ctxseg_jax.main --config configs/demo_hrnet.py --workdir runs/demo_hrnet
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.losses import set_term
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'demo_hrnet'
  stages = protocols.synthetic_demo_hrnet(config)
  models.set_head(config.model, 'decode_head', HEADS.config(
      'fcn', **stages, kernel_size=1, num_convs=1, channels=240, concat_input=False, dropout=0.0))
  set_term(config.loss, 'aux', None)  # no auxiliary head
  return config
