"""EncNet (mmseg encnet_r50-d8 / PyTorch-Encoding EncNet): dilated ResNet, EncHead on stages 2-4, auxiliary
FCNHead on stage 3."""
from __future__ import annotations

import ml_collections

from ctxseg_jax.models import factory
from ctxseg_jax.models.heads.encnet import EncHead
from ctxseg_jax.models.segmentor import Segmentor


def build_encnet(model_config: ml_collections.ConfigDict, num_classes: int) -> Segmentor:
  """Builds the EncNet described by config.model (keys: dtype, backbone.*, head.*, encnet.*, aux_head.*).

  The head's width is config.model.head.channels; it reads the backbone's stages 2, 3 and 4 (mmseg in_index
  (1, 2, 3)), whatever their widths (factory.backbone_channels: 512, 1024, 2048 for ResNet-50/101), so
  reduced-width backbones work unchanged. Training-only outputs ('se_logits', 'aux_logits') and their parameters
  exist only in train mode.
  """
  encnet = model_config.encnet
  decode_head = EncHead(
      num_classes=num_classes,
      channels=model_config.head.channels,
      num_codes=encnet.num_codes,
      lateral=encnet.lateral,
      se_head=encnet.se_head,
      dropout=model_config.head.dropout,
      dropout_mode=model_config.head.dropout_mode,
      dtype=factory.compute_dtype(model_config.dtype))
  return Segmentor(
      backbone=factory.build_backbone(model_config),
      decode_head=decode_head,
      aux_head=factory.build_aux_head(model_config, num_classes),
      decode_in_index=(1, 2, 3),
      aux_in_index=2)
