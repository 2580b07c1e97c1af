"""Pixel-wise softmax cross-entropy with an ignore label, in the two reductions the references use."""
from __future__ import annotations

import jax
import jax.numpy as jnp

REDUCTIONS = ('valid', 'all')


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int,
                        reduction: str = 'valid') -> jax.Array:
  """Mean softmax cross-entropy over pixels, computed in float32.

  Args:
    logits: (B, H, W, K) class scores at label resolution.
    labels: int (B, H, W); ignore_index (and any value outside 0..K-1) marks pixels that carry no loss.
    reduction: 'valid' divides the summed loss by the number of valid pixels (PyTorch-Encoding, HRNet, Paddle;
      0 when no pixel is valid); 'all' divides by every pixel, ignored ones included (mmseg's default
      avg_non_ignore=False).
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
  if reduction == 'valid':
    return per_pixel.sum() / jnp.maximum(valid.sum(), 1).astype(jnp.float32)
  return per_pixel.mean()
