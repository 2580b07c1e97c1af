"""A linear head: dropout and a 1x1 classifier on its input (a linear probe of the backbone's features).

With `input_transform='resize_concat'` and reads=(0, 1, 2, 3) it classifies every stage resized to the finest
one and concatenated, as HRNetV2's representation head does without its 1x1 ConvModule.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax.models.heads.base import HeadType
from ctxseg_jax.models.heads.fcn import DROPOUT_SETTINGS, classifier_dropout, conv_seg


class LinearHead(nn.Module):
  """(B, h, w, C) features -> dropout -> 1x1 conv with bias (N(0, 0.01), mmseg's conv_seg) -> float32 logits."""
  num_classes: int
  dropout: float = 0.1
  dropout_mode: str = 'channel'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(B, h, w, C) -> (B, h, w, num_classes) float32 logits."""
    dropout = classifier_dropout(self.dropout, self.dropout_mode, train=train)
    if dropout is not None:
      x = dropout(x)
    return conv_seg(self.num_classes, x.shape[-1], dtype=self.dtype)(x.astype(self.dtype)).astype(jnp.float32)


def build(config, *, num_classes: int, dtype: Any) -> LinearHead:
  return LinearHead(num_classes=num_classes, dropout=config.dropout, dropout_mode=config.dropout_mode, dtype=dtype)


COMPONENT = HeadType(build, dict(DROPOUT_SETTINGS), outputs=('logits',), doc='1x1 classifier')
