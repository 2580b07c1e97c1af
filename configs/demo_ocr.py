"""Demo: OCRNet (soft object regions, object-contextual representations) on a width-16 HRNetV2-W18-Small-v2
topology, trained on the built-in synthetic context dataset (CPU friendly). configs/demo_hrnet.py is its HRNet
baseline with the same data, backbone and budget. The heads follow mmseg's OCRNet at a demo width: a 1x1 FCN head
(240 channels) publishing the soft regions, weighted 0.4 in the loss, and an OCR head 128 wide with 64 key channels.

python -m ctxseg_jax.main --config configs/demo_ocr.py --workdir runs/demo_ocr
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'demo_ocr'
  stages = protocols.synthetic_demo_hrnet(config)
  models.set_head(config.model, 'aux_head', HEADS.config(
      'fcn', **stages, kernel_size=1, num_convs=1, channels=240, concat_input=False, dropout=0.0,
      outputs=('aux_logits',)))
  models.set_head(config.model, 'decode_head', HEADS.config(
      'ocr', **stages, reads_outputs=('aux_logits',), channels=128, key_channels=64, bottleneck_bias=False,
      dropout=0.0))
  return config
