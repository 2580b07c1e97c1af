"""A projection head: pixel embeddings for contrastive losses (Contextrast, ContrastiveSeg).

Layers (ContrastiveSeg's 'convmlp'): 1x1 conv C -> C with bias, BN, ReLU, 1x1 conv C -> embed_dim with bias, then
L2 normalisation over channels in float32. Contextrast puts one on each of its I encoder layers, training-only
(`train_only=True` in its wiring), so the inference model is the baseline's.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.heads.base import HeadType
from ctxseg_jax.models.heads.fcn import INIT_SETTING
from ctxseg_jax.models.layers.conv import ConvBNReLU, conv2d, conv_init
from ctxseg_jax.settings import Setting

Dtype = Any
NORM_EPSILON = 1e-12  # F.normalize's eps: x / max(||x||, eps)


class ProjectionHead(nn.Module):
  """(B, h, w, C) features -> (B, h, w, embed_dim) float32 embeddings of unit L2 norm.

  Attributes:
    embed_dim: d, the embedding width.
    weight_init: initialisation of the convs, 'pytorch' (nn.Conv2d defaults, as ContrastiveSeg's) or 'mmcv'.
    dtype: compute dtype of the convs; the normalisation is float32.
  """
  embed_dim: int = 256
  weight_init: str = 'pytorch'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    y = ConvBNReLU(channels, 1, use_bias=True, dtype=self.dtype, name='hidden',
                   **conv_init(self.weight_init, channels, 1))(x, train=train)
    y = conv2d(self.embed_dim, 1, use_bias=True, dtype=self.dtype, name='embed',
               **conv_init(self.weight_init, channels, 1))(y).astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(y * y, axis=-1, keepdims=True))
    return y / jnp.maximum(norm, NORM_EPSILON)


SETTINGS = {
    'embed_dim': Setting(256, 'embedding width d (Contextrast++ and ContrastiveSeg: 256)', rule=settings.POSITIVE),
    'weight_init': dataclasses.replace(INIT_SETTING, default='pytorch'),
}


def build(config, *, num_classes: int, dtype: Dtype) -> ProjectionHead:
  """The ProjectionHead of a head config (SETTINGS' keys); `num_classes` is unused."""
  del num_classes
  return ProjectionHead(embed_dim=config.embed_dim, weight_init=config.weight_init, dtype=dtype)


COMPONENT = HeadType(build, SETTINGS, outputs=('embeddings',),
                     doc='projection to L2-normalised pixel embeddings (contrastive losses)')
