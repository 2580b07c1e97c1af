"""Pixel-wise softmax cross-entropy with an ignore label, in the reductions the references use, and OHEM."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.losses.base import TermType
from ctxseg_jax.models.layers.resize import resize_bilinear
from ctxseg_jax.settings import Setting

REDUCTIONS = ('valid', 'all', 'ohem')


def _label_nll(logits: jax.Array, labels: jax.Array,
               ignore_index: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-pixel -log softmax(logits)[label] in float32, (B, H, W), 0 where the label is not a class; with the valid
  mask and the labels with invalid ones replaced by 0.

  Labels equal to ignore_index, or outside 0..K-1, are invalid.
  """
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(valid, labels, 0)
  log_norm = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
  return jnp.where(valid, log_norm - label_logit, 0.0), valid, safe_labels


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int, reduction: str = 'valid',
                        class_weight: Sequence[float] | None = None) -> jax.Array:
  """Mean softmax cross-entropy over pixels, computed in float32.

  Args:
    logits: (B, H, W, K) class scores at label resolution (or (B, K) image scores: each image counts as a pixel).
    labels: int (B, H, W) (or (B,)); ignore_index (and any value outside 0..K-1) marks pixels that carry no loss.
    reduction: 'valid' divides the summed loss by the number of valid pixels (PyTorch-Encoding, HRNet, Paddle;
      0 when no pixel is valid); 'all' divides by every pixel, ignored ones included (mmseg's default
      avg_non_ignore=False).
    class_weight: optional (K,) weights; pixel loss is multiplied by its label's weight. With 'valid' the sum
      is divided by the summed weights of the valid pixels (PyTorch CrossEntropyLoss(weight=...), HRNet), with
      'all' by the number of pixels (mmseg's class_weight).
  Returns:
    float32 scalar.
  """
  if reduction not in ('valid', 'all'):
    raise ValueError(f'reduction={reduction!r}; valid: (\'valid\', \'all\') (OHEM: ohem_cross_entropy)')
  num_classes = logits.shape[-1]
  per_pixel, valid, safe_labels = _label_nll(logits, labels, ignore_index)
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


def ohem_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int, *, thresh: float, min_kept: int,
                       class_weight: Sequence[float] | None = None) -> jax.Array:
  """HRNet's online hard example mining CE (OhemCrossEntropy), computed in float32.

  Among the valid pixels, with p the softmax probability of the ground-truth class, the threshold is
  max(p sorted ascending at index min(min_kept, n_valid - 1), thresh); the loss is the plain mean of the (class-
  weighted) pixel losses of the pixels with p below it: the hard pixels, and at least min_kept of them when there
  are that many.

  Args:
    logits: (B, H, W, K) at label resolution; labels: int (B, H, W).
  Returns:
    float32 scalar (0 when no pixel is kept).
  """
  nll, valid, safe_labels = _label_nll(logits, labels, ignore_index)
  prob = jax.lax.stop_gradient(jnp.exp(-nll))
  per_pixel = nll
  if class_weight is not None and len(class_weight):
    per_pixel = per_pixel * jnp.asarray(class_weight, jnp.float32)[safe_labels]
  ranked = jnp.sort(jnp.where(valid, prob, jnp.inf).reshape(-1))
  index = jnp.clip(jnp.minimum(min_kept, valid.sum() - 1), 0, ranked.shape[0] - 1)
  threshold = jnp.maximum(ranked[index], thresh)
  kept = valid & (prob < threshold)
  return jnp.where(kept, per_pixel, 0.0).sum() / jnp.maximum(kept.sum(), 1).astype(jnp.float32)


SETTINGS = {
    'reduction': Setting('valid', "'valid': mean over non-ignored pixels (PyTorch-Encoding, HRNet); 'all': mean "
                         "over all pixels, ignored ones count 0 (mmseg avg_non_ignore=False); 'ohem': HRNet's online "
                         'hard example mining', choices=REDUCTIONS),
    'class_weight': Setting((), 'per-class weights (K of them, >= 0); () for none', rule=settings.WEIGHT_TUPLE),
    'align_corners': Setting(False, 'corner convention of the resize of the logits to the label size (mmseg: '
                             'False; HRNet-OCR, PyTorch-Encoding: True)'),
    'ohem_thresh': Setting(0.9, "reduction='ohem': pixels whose ground-truth probability is below it are kept",
                           rule=settings.UNIT_INTERVAL),
    'ohem_min_kept': Setting(131_072, "reduction='ohem': at least this many pixels are kept per group (HRNet "
                             'OHEMKEEP)', rule=settings.NON_NEGATIVE),
    'ohem_group_size': Setting(0, "reduction='ohem': images per selection, the loss averaged over groups (HRNet "
                               'selects per GPU replica: its per-GPU batch); 0: the whole batch',
                               rule=settings.NON_NEGATIVE),
}


def build(config, *, ignore_index: int):
  """The term of a cross_entropy config: CE of `config.output` resized bilinearly (config.align_corners) to the
  label size; image-level logits (B, K) against class ids (B,) (a classification dataset) as they are, the
  softmax cross-entropy PyTorch's CrossEntropyLoss computes."""
  class_weight = tuple(config.class_weight) or None

  def term(outputs, batch, step, key):
    del step, key
    labels, logits = batch['label'], outputs[config.output]
    if logits.ndim > 2:
      logits = resize_bilinear(logits, labels.shape[1:3], align_corners=config.align_corners)
    if config.reduction != 'ohem':
      return pixel_cross_entropy(logits, labels, ignore_index, config.reduction, class_weight), {}
    ohem = functools.partial(ohem_cross_entropy, ignore_index=ignore_index, thresh=config.ohem_thresh,
                             min_kept=config.ohem_min_kept, class_weight=class_weight)
    group = config.ohem_group_size or labels.shape[0]
    if labels.shape[0] % group:
      raise ValueError(f'ohem_group_size={group} does not divide the batch of {labels.shape[0]} images')
    grouped = lambda x: x.reshape(-1, group, *x.shape[1:])  # noqa: E731
    return jnp.mean(jax.vmap(ohem)(grouped(logits), grouped(labels))), {}

  return term


COMPONENT = TermType(build, SETTINGS, doc='pixel softmax cross-entropy with ignore index, or OHEM')
