"""An image classifier head: the CIFAR network's last layers (PyTorch-Encoding's recognition models).

BN + ReLU on the last stage (the network's blocks end before them), global average pooling (AvgPool2d(8) on the
8x8 maps of a 32x32 image), optional dropout, and a Linear layer to the classes: one score vector per image.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.heads.base import HeadType
from ctxseg_jax.models.layers.conv import batch_norm
from ctxseg_jax.models.layers.linear import torch_linear
from ctxseg_jax.settings import Setting

Dtype = Any


class ClassifierHead(nn.Module):
  """(B, h, w, C) features -> (B, num_classes) float32 logits.

  Layers: `bn` BatchNorm + ReLU (when norm_act), the mean over positions, dropout (when > 0), `fc` Linear
  C -> num_classes with PyTorch's default initialisation.

  Attributes:
    num_classes: K.
    norm_act: BN + ReLU before pooling (PyTorch-Encoding's CIFAR networks).
    dropout: dropout rate before the Linear layer; 0 disables it.
    dtype: compute dtype of the normalisation.
  """
  num_classes: int
  norm_act: bool = True
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.norm_act:
      x = nn.relu(batch_norm(train=train, dtype=self.dtype, name='bn')(x))
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.dropout > 0:
      pooled = nn.Dropout(self.dropout, deterministic=not train, name='dropout')(pooled)
    return torch_linear(self.num_classes, pooled.shape[-1], name='fc')(pooled)


SETTINGS = {
    'norm_act': Setting(True, 'BN + ReLU on the features before pooling (PyTorch-Encoding\'s CIFAR networks)'),
    'dropout': Setting(0.0, 'dropout rate before the Linear layer; 0 disables it', rule=settings.UNIT_INTERVAL),
}


def build(config, *, num_classes: int, dtype: Dtype) -> ClassifierHead:
  """The ClassifierHead of a head config (SETTINGS' keys)."""
  return ClassifierHead(num_classes=num_classes, norm_act=config.norm_act, dropout=config.dropout, dtype=dtype)


COMPONENT = HeadType(build, SETTINGS, outputs=('logits',), level='image',
                     doc='image classifier: BN, ReLU, global average pooling, Linear')
