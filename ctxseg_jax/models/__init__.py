"""Segmentation models and the registry that builds them from config.model.

A model family registers a builder `(model_config, num_classes) -> flax.linen.Module` under its
config.model.name. Every built model maps (B, H, W, 3) normalised images to a dict of named float32 outputs
(see `Segmentor`): 'logits' always, training-only outputs such as 'aux_logits' only when called with
train=True.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import ml_collections

from ctxseg_jax.models.encnet import build_encnet
from ctxseg_jax.models.fcn import build_fcn

ModelBuilder = Callable[[ml_collections.ConfigDict, int], nn.Module]

MODELS: dict[str, ModelBuilder] = {
    'fcn': build_fcn,
    'encnet': build_encnet,
}


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds the model named by model_config.name for `num_classes` classes."""
  if model_config.name not in MODELS:
    raise ValueError(f'config.model.name={model_config.name!r} is not a known model; choose one of {sorted(MODELS)}')
  if num_classes < 1:
    raise ValueError(f'num_classes must be positive, got {num_classes}')
  return MODELS[model_config.name](model_config, num_classes)
