"""Config -> module helpers shared by every model builder (FCN, and later EncNet, OCRNet, ...)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from ctxseg_jax.models.backbones.resnet import ResNet
from ctxseg_jax.models.heads.fcn import FCNHead

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """'float32' or 'bfloat16' (config.model.dtype) -> the jnp dtype."""
  if name not in DTYPES:
    raise ValueError(f'config.model.dtype={name!r} is not valid; choose one of {list(DTYPES)}')
  return DTYPES[name]


def build_backbone(model_config: ml_collections.ConfigDict) -> ResNet:
  """The dilated ResNet described by config.model.backbone, computing in config.model.dtype."""
  backbone = model_config.backbone
  return ResNet(
      depth=backbone.depth,
      stem=backbone.stem,
      base_width=backbone.base_width,
      output_stride=backbone.output_stride,
      contract_dilation=backbone.contract_dilation,
      zero_init_residual=backbone.zero_init_residual,
      dtype=compute_dtype(model_config.dtype))


def backbone_channels(model_config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Channels of the four stage outputs of `build_backbone(model_config)`, e.g. (256, 512, 1024, 2048)."""
  backbone = model_config.backbone
  expansion = 1 if backbone.depth < 50 else 4
  return tuple(backbone.base_width * 2**stage * expansion for stage in range(4))


def build_aux_head(model_config: ml_collections.ConfigDict, num_classes: int) -> FCNHead | None:
  """The training-only auxiliary FCNHead of config.model.aux_head (no input concat, as in mmseg and PTE).

  It uses config.model.head.dropout_mode, so one switch selects the mmseg (Dropout2d) or PyTorch-Encoding
  (element-wise) flavour for every head. Returns None when the auxiliary head is disabled.
  """
  aux = model_config.aux_head
  if not aux.enabled:
    return None
  return FCNHead(
      num_classes=num_classes,
      channels=aux.channels,
      num_convs=aux.num_convs,
      concat_input=False,
      dropout=aux.dropout,
      dropout_mode=model_config.head.dropout_mode,
      dtype=compute_dtype(model_config.dtype))
