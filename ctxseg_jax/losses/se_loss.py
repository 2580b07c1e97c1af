"""EncNet's Semantic Encoding loss: per-image class presence predicted from the global context vector."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ctxseg_jax.losses.base import TermType


def class_presence(labels: jax.Array, num_classes: int, ignore_index: int) -> jax.Array:
  """Which classes occur in each label map.

  Args:
    labels: int (B, H, W) label maps (after cropping and augmentation, as the references compute it).
    num_classes: K.
    ignore_index: a value that never counts; so does any value outside 0..K-1 (mmseg/PTE histogram range).
  Returns:
    float32 (B, K), 1 where the class occurs in the image, else 0.
  """
  flat = labels.reshape(labels.shape[0], -1).astype(jnp.int32)
  valid = (flat >= 0) & (flat < num_classes) & (flat != ignore_index)
  # Everything that does not count goes to an extra bin, so the histogram never needs a (B, H*W, K) one-hot.
  bins = jnp.where(valid, flat, num_classes)
  counts = jax.vmap(lambda row: jnp.bincount(row, length=num_classes + 1))(bins)
  return (counts[:, :num_classes] > 0).astype(jnp.float32)


def se_loss(se_logits: jax.Array, labels: jax.Array, ignore_index: int) -> jax.Array:
  """Binary cross-entropy with logits of `se_logits` (B, K) against `class_presence(labels)`, mean over B*K.

  Equals mmseg's CrossEntropyLoss(use_sigmoid=True) and, up to PyTorch BCELoss's log clamp at -100, PyTorch-
  Encoding's BCELoss(sigmoid(x)). Computed in float32; unweighted (the loss term applies its weight).
  """
  se_logits = se_logits.astype(jnp.float32)
  target = class_presence(labels, se_logits.shape[-1], ignore_index)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(se_logits, target))


def build(config, *, ignore_index: int):
  """The term of an 'se' config: se_loss of `config.output` (B, K) against the batch's label maps."""

  def term(outputs, batch, step, key):
    del step, key
    return se_loss(outputs[config.output], batch['label'], ignore_index), {}

  return term


COMPONENT = TermType(build, doc="EncNet's SE-loss: BCE on per-image class presence")
