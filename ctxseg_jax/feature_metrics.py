"""Feature-level metrics of the features before the classifier (Contextrast, section 5.2; defined by TSC, Li et
al., CVPR 2022): intra-class alignment A, inter-class uniformity U and neighbourhood uniformity U_l.

With V_n the features of class n, mu_n its centre and N the classes present in the evaluated split,

  A   = 1/N sum_n 1/|V_n|^2 sum_{v_j, v_k in V_n} ||v_j - v_k||      (lower: classes more compact)
  U   = 1/(N (N - 1)) sum_n sum_{m != n} ||mu_n - mu_m||             (higher: centres further apart)
  U_l = 1/(N l) sum_n (sum of the l smallest ||mu_n - mu_m||, m != n) (higher: nearest centres further apart)

What the definitions leave open, and our choice:
- The features are each pixel's classifier input (the head's last feature map, at its own stride), L2-normalised,
  so that the figures compare across models whose features differ in scale: every distance lies in [0, 2].
- A pixel's class is its ground-truth label nearest-sampled at the feature pixel (`labels_at_features`).
- mu_n is the mean of all of class n's normalised features over the split (exact), normalised again: a point
  on the unit sphere like the features, so U measures the centres' directions, not the classes' spread.
- A is computed on a fixed, seeded sample of at most `samples` pixels per class (default 256): each pixel of the
  split gets a random key from (seed, image index, position) and each class keeps the pixels with the largest
  keys. The sample is then a uniform one that does not depend on the batch size or the number of devices.
- l = `neighbours` (default 3), or N - 1 when fewer classes are present.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

KEYS = ('features/alignment', 'features/uniformity', 'features/neighbourhood_uniformity')


class FeatureStats(NamedTuple):
  """What the metrics need, summed or sampled over the images seen so far.

  sums: float32 (K, C), per class the sum of its normalised features.
  counts: int32 (K,), per class its number of feature pixels.
  keys: int32 (K, M), the sampled pixels' random keys (-1 where a class has fewer than M pixels).
  samples: float32 (K, M, C), the sampled pixels' normalised features (zeros where keys is -1).
  """
  sums: jax.Array
  counts: jax.Array
  keys: jax.Array
  samples: jax.Array


def labels_at_features(labels: jax.Array, image_size: jax.Array, original_size: jax.Array,
                       input_shape: tuple[int, int], feature_shape: tuple[int, int], num_classes: int) -> jax.Array:
  """The ground-truth class of every feature pixel, -1 where it has none.

  Feature pixel (y, x) stands for input pixel (floor(y H / h), floor(x W / w)) (PyTorch's nearest rule, as the
  training losses downsample labels); that pixel lies inside the resized image when it is below `image_size`, and
  stands for original pixel floor(y_in * original / image_size), whose label it takes.

  Args:
    labels: int (B, Lh, Lw) at original resolution, padded; values outside 0..K-1 are ignored.
    image_size: int (B, 2), each image's size inside the (H, W) input.
    original_size: int (B, 2), each image's original size.
    input_shape: (H, W) of the model input.
    feature_shape: (h, w) of the features.
  Returns:
    int32 (B, h, w).
  """
  (height, width), (h, w) = input_shape, feature_shape
  rows = jnp.asarray(np.arange(h) * height // h, jnp.int32)  # input pixel of each feature row: (h,)
  cols = jnp.asarray(np.arange(w) * width // w, jnp.int32)
  image_size, original_size = image_size.astype(jnp.int32), original_size.astype(jnp.int32)
  row_in = rows[None] < image_size[:, :1]  # (B, h)
  col_in = cols[None] < image_size[:, 1:]
  source_rows = jnp.where(row_in, rows[None] * original_size[:, :1] // jnp.maximum(image_size[:, :1], 1), 0)
  source_cols = jnp.where(col_in, cols[None] * original_size[:, 1:] // jnp.maximum(image_size[:, 1:], 1), 0)
  batch = jnp.arange(labels.shape[0])[:, None, None]
  sampled = labels[batch, source_rows[:, :, None], source_cols[:, None, :]].astype(jnp.int32)
  valid = row_in[:, :, None] & col_in[:, None, :] & (sampled >= 0) & (sampled < num_classes)
  return jnp.where(valid, sampled, -1)


def pixel_keys(indices: jax.Array, shape: tuple[int, int], seed: int) -> jax.Array:
  """int32 (B, h, w) random keys in [0, 2^31), a function of (seed, image index, position) alone."""
  base = jax.random.key(seed)
  bits = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(base, i), shape, jnp.uint32))(indices)
  return (bits >> 1).astype(jnp.int32)


def normalize(features: jax.Array) -> jax.Array:
  """float32 features divided by their L2 norm over the last axis (zero vectors stay zero)."""
  features = features.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
  return features / jnp.maximum(norm, 1e-12)


def batch_statistics(features: jax.Array, labels: jax.Array, indices: jax.Array, *, num_classes: int,
                     samples: int, seed: int) -> FeatureStats:
  """The FeatureStats of one batch.

  Args:
    features: (B, h, w, C) the classifier's input.
    labels: int32 (B, h, w) from `labels_at_features` (-1: no class).
    indices: int (B,) each image's index in the split (its pixels' keys depend on it).
  """
  channels = features.shape[-1]
  flat = normalize(features).reshape(-1, channels)
  classes = jnp.where(labels < 0, num_classes, labels).reshape(-1)  # unlabelled pixels sort after every class
  keys = jnp.where(labels < 0, -1, pixel_keys(indices, labels.shape[1:], seed)).reshape(-1)
  sums = jax.ops.segment_sum(flat, classes, num_segments=num_classes + 1)[:num_classes]
  # Pixels ordered by class, then by decreasing key: each class's `samples` largest keys come first in its run.
  sorted_classes, negated_keys, order = jax.lax.sort(
      (classes, -keys, jnp.arange(classes.shape[0], dtype=jnp.int32)), num_keys=2)
  starts = jnp.searchsorted(sorted_classes, jnp.arange(num_classes), side='left')
  counts = jnp.searchsorted(sorted_classes, jnp.arange(num_classes), side='right') - starts
  rank = jnp.arange(samples)
  taken = rank[None] < counts[:, None]  # (K, M)
  position = jnp.minimum(starts[:, None] + rank[None], classes.shape[0] - 1)
  sample_keys = jnp.where(taken, -negated_keys[position], -1)
  sample_features = jnp.where(taken[..., None], flat[order[position]], 0.0)
  return FeatureStats(sums, counts.astype(jnp.int32), sample_keys, sample_features)


@jax.jit
def merge(a: FeatureStats, b: FeatureStats) -> FeatureStats:
  """The FeatureStats of the images of `a` and `b` together: sums and counts added, each class's sample the
  pixels with the largest keys of both."""
  keys = jnp.concatenate([a.keys, b.keys], axis=1)
  kept, index = jax.lax.top_k(keys, a.keys.shape[1])
  samples = jnp.take_along_axis(jnp.concatenate([a.samples, b.samples], axis=1), index[..., None], axis=1)
  return FeatureStats(a.sums + b.sums, a.counts + b.counts, kept, samples)


class FeatureAccumulator:
  """Merges per-batch FeatureStats on device; `result()` computes the metrics on the host."""

  def __init__(self, neighbours: int):
    self.neighbours = neighbours
    self._stats: FeatureStats | None = None

  def add(self, stats: FeatureStats) -> None:
    self._stats = stats if self._stats is None else merge(self._stats, stats)

  def result(self) -> dict[str, float]:
    if self._stats is None:
      raise ValueError('no batch was added')
    return feature_metrics(*jax.device_get(self._stats), neighbours=self.neighbours)


def feature_metrics(sums: np.ndarray, counts: np.ndarray, keys: np.ndarray, samples: np.ndarray, *,
                    neighbours: int) -> dict[str, float]:
  """A, U and U_l (the module docstring) from accumulated FeatureStats fields, in float64.

  Returns KEYS plus 'features/classes' (N, the classes with at least one pixel) and 'features/neighbours' (the l
  used); U and U_l are NaN when fewer than two classes are present, A when none is.
  """
  present = np.asarray(counts) > 0
  alignments = []
  for class_keys, class_samples in zip(np.asarray(keys)[present], np.asarray(samples, np.float64)[present]):
    v = class_samples[class_keys >= 0]
    alignments.append(pairwise_distances(v, v).mean())
  centres = np.asarray(sums, np.float64)[present]
  centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
  n = len(centres)
  l = min(neighbours, n - 1)
  if n >= 2:
    distances = pairwise_distances(centres, centres)
    others = np.sort(distances + np.diag(np.full(n, np.inf)), axis=1)[:, :-1]  # each row without itself
    uniformity = float(others.mean())
    neighbourhood = float(others[:, :l].sum() / (n * l))
  else:
    uniformity = neighbourhood = float('nan')
  return {KEYS[0]: float(np.mean(alignments)) if alignments else float('nan'), KEYS[1]: uniformity,
          KEYS[2]: neighbourhood, 'features/classes': n, 'features/neighbours': max(l, 0)}


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(n, m) Euclidean distances between the rows of float64 a (n, C) and b (m, C), through the Gram matrix."""
  squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
  return np.sqrt(np.maximum(squared, 0.0))


def format_line(results: dict[str, float], samples: int) -> str:
  """One console line with A, U and U_l."""
  return (f'features before the classifier: A {results[KEYS[0]]:.4f}  U {results[KEYS[1]]:.4f}  '
          f'U_{results["features/neighbours"]} {results[KEYS[2]]:.4f}  ({results["features/classes"]} classes, '
          f'<= {samples} sampled pixels per class for A)')
