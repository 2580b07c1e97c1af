"""Contextrast's pixel-anchor loss with boundary-aware negative (BANE) sampling (Sung et al., CVPR 2024).

For each encoder layer i (embeddings E_i (B, h_i, w_i, d), unit length, from training-only projection heads):
  labels g_i and predictions y_i: the label map and the argmax of the final logits (no gradient), both resized
    to (h_i, w_i) by nearest neighbour (PyTorch F.interpolate(mode='nearest'), layers.resize.resize_nearest);
  anchors (eq. 1): A_i[n] = mean of the layer-i embeddings whose label is n, over the whole (global) batch, so the
    anchors are exact under data parallelism; anchor update: A^_i[n] = w_l A_i[n] + w_h A_I[n] for classes present
    at both layer i and the last layer I, A^_i[n] = A_i[n] otherwise, A^_I = A_I; then (`normalize_anchors`)
    scaled to unit length, so that anchor-embedding products are cosine similarities in [-1, 1];
  negatives of anchor m (BANE, section 3.3): for each image and true class n, the error map B[n] = (g_i = n) and
    (y_i != n), its exact Euclidean distance transform (ops.distance_transform_edt: the distance to the nearest
    pixel outside the error region), and the `bane_fraction` of its pixels nearest the boundary (the ceil of
    fraction x size, ties broken by position); a selected pixel is a hard negative of the anchor of the class it
    was wrongly predicted as, y_i (and, being of class n, a positive of anchor n, so it is pulled toward its true
    class). With `bane_region='predicted'` the error map is instead per predicted class m, (y_i = m) and (g_i != m),
    the false positives of m, which the seed's formula B[n] = 1[(y != n) and (g = n)] can also be read to mean when
    its sentence calls the selected pixels the negatives "of the n-th anchor". Each anchor takes at most
    `num_negatives` negatives: its hard negatives first (a random subset if there are more), then random
    embeddings of other classes to fill the budget;
  loss (eqs. 3-4): for a positive v+ of class n (an embedding labelled n: all of them, or `num_positives` drawn at
    random), -log(e^(a.v+ / tau) / (e^(a.v+ / tau) + sum_v- e^(a.v- / tau))) with a = A^_i[n], which is
    softplus(logsumexp(a.v- / tau) - a.v+ / tau); its mean over the positives of n, then over the classes present,
    L_i; L_PA = sum_i lambda_i L_i.

Computed in float32 with static shapes: positives are all pixels (or a fixed number per class) and negatives a fixed
budget per anchor, with masks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.losses.base import TermType
from ctxseg_jax.models.layers.resize import resize_nearest
from ctxseg_jax.ops.distance_transform import distance_transform_edt
from ctxseg_jax.settings import Setting

BANE_REGIONS = ('true', 'predicted')
# float32 products on accelerators that would otherwise round matmul operands to bf16 (logits are divided by tau).
HIGHEST = jax.lax.Precision.HIGHEST
NO_NEGATIVES = -1e4  # the log-sum-exp of an empty set of negatives: exp(-1e4) is 0 in float32


def class_anchors(embeddings: jax.Array, labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
  """Per-class mean embeddings over the batch (eq. 1).

  Args:
    embeddings: float32 (B, h, w, d).
    labels: int (B, h, w); values outside 0..num_classes-1 (ignore) count for no class.
    num_classes: K.
  Returns:
    anchors float32 (K, d) (zero for absent classes) and counts int32 (K,).
  """
  flat = embeddings.reshape(-1, embeddings.shape[-1])
  one_hot = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=flat.dtype)  # out-of-range rows are all zero
  counts = jnp.sum(one_hot, axis=0)
  sums = jnp.matmul(one_hot.T, flat, precision=HIGHEST)
  return sums / jnp.maximum(counts, 1)[:, None], counts.astype(jnp.int32)


def boundary_negatives(labels: jax.Array, predictions: jax.Array, num_classes: int, fraction: float,
                       region: str = 'true') -> jax.Array:
  """BANE selection: which pixels are hard negatives (see the module docstring).

  Args:
    labels: int (B, h, w) ground truth at the layer's size; values outside 0..K-1 are ignored.
    predictions: int (B, h, w) predicted classes at the layer's size.
    num_classes: K.
    fraction: the share of each error map's pixels kept, those nearest its boundary (ceil of fraction x size).
    region: 'true' (error maps per true class) or 'predicted' (per predicted class).
  Returns:
    bool (B, h, w): selected pixels. Each is a hard negative of the anchor of its predicted class.
  """
  if region not in BANE_REGIONS:
    raise ValueError(f'BANE region {region!r} is not supported; choose one of {list(BANE_REGIONS)}')
  batch, height, width = labels.shape
  valid = (labels >= 0) & (labels < num_classes)
  error = valid & (predictions != labels)
  owner = labels if region == 'true' else predictions  # the class whose error map holds each error pixel
  classes = jnp.arange(num_classes)[None, :, None, None]
  maps = error[:, None] & (owner[:, None] == classes)  # (B, K, h, w)
  distance = distance_transform_edt(maps).reshape(batch, num_classes, -1)
  # Rank every member of a map by (distance, position): a stable argsort of the distances, non-members last.
  order = jnp.argsort(jnp.where(maps.reshape(batch, num_classes, -1), distance, jnp.inf), axis=-1, stable=True)
  ranks = jnp.argsort(order, axis=-1)
  sizes = jnp.sum(maps, axis=(2, 3)).astype(jnp.float32)
  keep = jnp.ceil(fraction * sizes).astype(jnp.int32)[..., None]
  selected = maps.reshape(batch, num_classes, -1) & (ranks < keep)
  return jnp.any(selected, axis=1).reshape(batch, height, width)


def _draw(priority: jax.Array, key: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """Per row of `priority` (R, N) (0: not eligible; higher tiers first), `count` distinct columns, random within a
  tier: indices int32 (R, count) and a validity mask (R, count)."""
  noise = jax.random.uniform(key, priority.shape)
  score = jnp.where(priority > 0, priority + noise, -1.0)
  values, indices = jax.lax.top_k(score, min(count, priority.shape[1]))
  return indices, values > 0


def pixel_anchor_loss(embeddings: jax.Array, labels: jax.Array, predictions: jax.Array, anchors: jax.Array,
                      present: jax.Array, key: jax.Array, *, temperature: float, num_negatives: int,
                      num_positives: int, bane_fraction: float, bane_region: str) -> jax.Array:
  """L_i of one layer (see the module docstring).

  Args:
    embeddings: float32 (B, h, w, d).
    labels, predictions: int (B, h, w) at the layer's size (labels outside 0..K-1 are ignored).
    anchors: float32 (K, d), the updated anchors A^_i.
    present: bool (K,), the classes with positives at this layer.
    key: PRNG key for the random draws.
    temperature, num_negatives, num_positives (0: all), bane_fraction, bane_region: the term's settings.
  Returns:
    float32 scalar: the mean over present classes of the mean over their positives of the InfoNCE loss.
  """
  num_classes = anchors.shape[0]
  flat = embeddings.reshape(-1, embeddings.shape[-1])
  flat_labels = labels.reshape(-1)
  flat_predictions = predictions.reshape(-1)
  valid = (flat_labels >= 0) & (flat_labels < num_classes)
  hard = boundary_negatives(labels, predictions, num_classes, bane_fraction, bane_region).reshape(-1)
  classes = jnp.arange(num_classes)[:, None]
  other = valid[None, :] & (flat_labels[None, :] != classes)  # (K, N)
  tiers = jnp.where(other & hard[None, :] & (flat_predictions[None, :] == classes), 2.0, other.astype(jnp.float32))
  negative_key, positive_key = jax.random.split(key)
  negatives, negative_mask = _draw(tiers, negative_key, num_negatives)  # (K, M)
  negative_logits = jnp.einsum('kd,kmd->km', anchors, flat[negatives], precision=HIGHEST) / temperature
  # An anchor without negatives contributes log(1 + 0) = 0: its log-sum-exp stands at a finite floor, not -inf,
  # so that no gradient of it is NaN.
  negative_lse = jnp.maximum(jax.nn.logsumexp(jnp.where(negative_mask, negative_logits, NO_NEGATIVES), axis=1),
                             NO_NEGATIVES)
  if num_positives:
    mine = (valid[None, :] & (flat_labels[None, :] == classes)).astype(jnp.float32)
    positives, positive_mask = _draw(mine, positive_key, num_positives)  # (K, P)
    positive_logits = jnp.einsum('kd,kpd->kp', anchors, flat[positives], precision=HIGHEST) / temperature
    losses = jnp.logaddexp(0.0, negative_lse[:, None] - positive_logits)
    per_class = jnp.sum(jnp.where(positive_mask, losses, 0.0), axis=1) / jnp.maximum(jnp.sum(positive_mask, 1), 1)
  else:
    safe_labels = jnp.where(valid, flat_labels, 0)
    # Every embedding against every anchor, (N, K): no (N, d) gather of anchors.
    all_logits = jnp.matmul(flat, anchors.T, precision=HIGHEST) / temperature
    positive_logits = jnp.take_along_axis(all_logits, safe_labels[:, None], axis=1)[:, 0]  # (N,)
    losses = jnp.where(valid, jnp.logaddexp(0.0, negative_lse[safe_labels] - positive_logits), 0.0)
    sums = jax.ops.segment_sum(losses, safe_labels, num_segments=num_classes)
    counts = jax.ops.segment_sum(valid.astype(jnp.float32), safe_labels, num_segments=num_classes)
    per_class = sums / jnp.maximum(counts, 1)
  return jnp.sum(jnp.where(present, per_class, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def contextrast_loss(embeddings: list[jax.Array], logits: jax.Array, labels: jax.Array, key: jax.Array, *,
                     layer_weights: tuple[float, ...], anchor_weights: tuple[float, float], temperature: float,
                     num_negatives: int, num_positives: int, bane_fraction: float, bane_region: str,
                     normalize_anchors: bool, detach_anchors: bool) -> tuple[jax.Array, dict]:
  """L_PA over the layers (see the module docstring).

  Args:
    embeddings: per layer, float32 (B, h_i, w_i, d), unit length, lowest layer first.
    logits: (B, h, w, K) final logits; their argmax is the prediction (no gradient).
    labels: int (B, H, W) label maps (the ignore index and every other value outside 0..K-1 are ignored).
    key: PRNG key.
    layer_weights: lambda_i per layer; anchor_weights: (w_l, w_h); the rest: the term's settings.
  Returns:
    (L_PA, {'layer<i>': L_i}).
  """
  num_classes = logits.shape[-1]
  predictions = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
  per_layer = []
  for embedding in embeddings:
    size = embedding.shape[1:3]
    layer_labels = resize_nearest(labels.astype(jnp.int32), size)
    anchors, counts = class_anchors(embedding.astype(jnp.float32), layer_labels, num_classes)
    per_layer.append((embedding.astype(jnp.float32), layer_labels, resize_nearest(predictions, size), anchors,
                      counts > 0))
  last_anchors, last_present = per_layer[-1][3], per_layer[-1][4]
  w_low, w_high = anchor_weights
  total, scalars = 0.0, {}
  for i, (embedding, layer_labels, layer_predictions, anchors, present) in enumerate(per_layer):
    if i < len(per_layer) - 1:
      both = (present & last_present)[:, None]
      anchors = jnp.where(both, w_low * anchors + w_high * last_anchors, anchors)
    if normalize_anchors:  # absent classes keep a zero anchor, with finite gradients
      anchors = anchors * jax.lax.rsqrt(jnp.maximum(jnp.sum(anchors * anchors, axis=-1, keepdims=True), 1e-24))
    if detach_anchors:
      anchors = jax.lax.stop_gradient(anchors)
    value = pixel_anchor_loss(embedding, layer_labels, layer_predictions, anchors, present,
                              jax.random.fold_in(key, i), temperature=temperature, num_negatives=num_negatives,
                              num_positives=num_positives, bane_fraction=bane_fraction, bane_region=bane_region)
    scalars[f'layer{i + 1}'] = value
    total = total + layer_weights[i] * value
  return total, scalars


SETTINGS = {
    'embeddings': Setting(('embed_1', 'embed_2', 'embed_3', 'embed_4'), 'the model outputs holding each layer\'s '
                          'embeddings, lowest layer first (training-only projection heads)', rule=settings.STR_TUPLE),
    'layer_weights': Setting((0.1, 0.4, 0.7, 1.0), 'lambda_i per layer, lowest first (the seed: 1.0, 0.7, 0.4, 0.1 '
                             'from layer 4 to 1)', rule=settings.WEIGHT_TUPLE),
    'anchor_weights': Setting((0.5, 0.5), '(w_l, w_h) of the anchor update w_l A_i + w_h A_I (not given by the '
                              'paper; Contextrast++: w_l + w_h = 1)', rule=settings.WEIGHT_TUPLE),
    'temperature': Setting(0.1, 'tau (ContrastiveSeg\'s 0.1; not given by the paper)', rule=settings.POSITIVE),
    'num_negatives': Setting(256, 'negatives per anchor: hard (BANE) ones first, random other-class embeddings to '
                             'fill', rule=settings.POSITIVE),
    'num_positives': Setting(0, 'positives per class drawn at random; 0: every embedding of the class',
                             rule=settings.NON_NEGATIVE),
    'bane_fraction': Setting(0.5, 'K: the share of each error map kept, nearest its boundary (Contextrast++: 50%)',
                             rule=settings.Rule('must be in (0, 1]', lambda v: 0 < v <= 1)),
    'bane_region': Setting('true', "error maps per true class ('true': a pixel of class n predicted as m, near the "
                           "boundary of class n's errors, is a negative of anchor m) or per predicted class "
                           "('predicted': the false positives of m)", choices=BANE_REGIONS),
    'normalize_anchors': Setting(True, 'scale the updated anchors to unit length (cosine similarities)'),
    'detach_anchors': Setting(False, 'stop gradients through the anchors (by default they flow to the embeddings '
                              'the anchors average, as eq. 1 written in PyTorch does)'),
}


def build(config, *, ignore_index: int):
  """The term of a 'contextrast' config: L_PA of the `embeddings` outputs, predictions from `output` (logits)."""
  del ignore_index  # every label outside 0..K-1 is ignored, this one included
  if len(config.layer_weights) != len(config.embeddings):
    raise ValueError(f'layer_weights {config.layer_weights} needs one weight per embedding output '
                     f'{config.embeddings}')

  def term(outputs, batch, step, key):
    del step
    return contextrast_loss(
        [outputs[name] for name in config.embeddings], outputs[config.output], batch['label'], key,
        layer_weights=tuple(config.layer_weights), anchor_weights=tuple(config.anchor_weights),
        temperature=config.temperature, num_negatives=config.num_negatives, num_positives=config.num_positives,
        bane_fraction=config.bane_fraction, bane_region=config.bane_region,
        normalize_anchors=config.normalize_anchors, detach_anchors=config.detach_anchors)

  return term


def _reads(config) -> dict[str, str]:
  return {'output': config.output, **{f'embeddings[{i}]': name for i, name in enumerate(config.embeddings)}}


COMPONENT = TermType(build, SETTINGS, reads=_reads, doc="Contextrast's pixel-anchor loss with BANE negatives")
