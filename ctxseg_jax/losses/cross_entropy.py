"""Pixel-wise softmax cross-entropy with an ignore label, in the two reductions the references use."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.layers.resize import resize_bilinear
from ctxseg_jax.settings import Setting

REDUCTIONS = ('valid', 'all')


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int, reduction: str = 'valid',
                        class_weight: Sequence[float] | None = None) -> jax.Array:
  """Mean softmax cross-entropy over pixels, computed in float32.

  Args:
    logits: (B, H, W, K) class scores at label resolution.
    labels: int (B, H, W); ignore_index (and any value outside 0..K-1) marks pixels that carry no loss.
    reduction: 'valid' divides the summed loss by the number of valid pixels (PyTorch-Encoding, HRNet, Paddle;
      0 when no pixel is valid); 'all' divides by every pixel, ignored ones included (mmseg's default
      avg_non_ignore=False).
    class_weight: optional (K,) weights; pixel loss is multiplied by its label's weight. With 'valid' the sum
      is divided by the summed weights of the valid pixels (PyTorch CrossEntropyLoss(weight=...), HRNet), with
      'all' by the number of pixels (mmseg's class_weight).
  Returns:
    float32 scalar.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f'reduction={reduction!r}; valid: {REDUCTIONS}')
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(valid, labels, 0)
  log_norm = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
  per_pixel = jnp.where(valid, log_norm - label_logit, 0.0)
  if class_weight is not None and len(class_weight):
    if len(class_weight) != num_classes:
      raise ValueError(f'class_weight has {len(class_weight)} entries for {num_classes} classes')
    pixel_weight = jnp.where(valid, jnp.asarray(class_weight, jnp.float32)[safe_labels], 0.0)
    per_pixel = per_pixel * pixel_weight
    if reduction == 'valid':
      total_weight = pixel_weight.sum()
      return per_pixel.sum() / jnp.where(total_weight > 0, total_weight, 1.0)
    return per_pixel.mean()
  if reduction == 'valid':
    return per_pixel.sum() / jnp.maximum(valid.sum(), 1).astype(jnp.float32)
  return per_pixel.mean()


SETTINGS = {
    'reduction': Setting('valid', "'valid': mean over non-ignored pixels (PyTorch-Encoding, HRNet); 'all': mean "
                         'over all pixels, ignored ones count 0 (mmseg avg_non_ignore=False)', choices=REDUCTIONS),
    'class_weight': Setting((), 'per-class weights (K of them, >= 0); () for none', rule=settings.WEIGHT_TUPLE),
}


def build(config, *, ignore_index: int):
  """The term of a cross_entropy config: CE of `config.output` resized bilinearly (align_corners False, as mmseg)
  to the label size."""
  class_weight = tuple(config.class_weight) or None

  def term(outputs, batch, step, key):
    del step, key
    labels = batch['label']
    logits = resize_bilinear(outputs[config.output], labels.shape[1:3])
    return pixel_cross_entropy(logits, labels, ignore_index, config.reduction, class_weight), {}

  return term


COMPONENT = settings.Component(build, SETTINGS, doc='pixel softmax cross-entropy with ignore index')
