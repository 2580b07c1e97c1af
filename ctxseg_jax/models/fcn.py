"""FCN (mmseg fcn_r50-d8 style): dilated ResNet, FCNHead on stage 4, auxiliary FCNHead on stage 3."""
from __future__ import annotations

import ml_collections

from ctxseg_jax.models import factory
from ctxseg_jax.models.heads.fcn import FCNHead
from ctxseg_jax.models.segmentor import Segmentor


def build_fcn(model_config: ml_collections.ConfigDict, num_classes: int) -> Segmentor:
  """Builds the FCN described by config.model (keys: dtype, backbone.*, head.*, aux_head.*)."""
  head = model_config.head
  decode_head = FCNHead(
      num_classes=num_classes,
      channels=head.channels,
      num_convs=head.num_convs,
      concat_input=head.concat_input,
      dropout=head.dropout,
      dropout_mode=head.dropout_mode,
      dtype=factory.compute_dtype(model_config.dtype))
  return Segmentor(
      backbone=factory.build_backbone(model_config),
      decode_head=decode_head,
      aux_head=factory.build_aux_head(model_config, num_classes),
      decode_in_index=3,
      aux_in_index=2)
