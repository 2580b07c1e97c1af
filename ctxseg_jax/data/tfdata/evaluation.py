"""Eval batches: one pass over a split in static-shape batches, resized (eval_scale) and padded, shared equally
between processes."""
from __future__ import annotations

import dataclasses
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from ctxseg_jax.data import transforms
from ctxseg_jax.data.datasets.base import DataError
from ctxseg_jax.data.tfdata import batching
from ctxseg_jax.data.tfdata import checks
from ctxseg_jax.data.tfdata import readers
from ctxseg_jax.data.tfdata import resample


@dataclasses.dataclass(frozen=True)
class _EvalSample:
  """One eval sample: resize (eval_scale), static padding, sizes; indices past the split are all-ignore padding."""
  reader: readers.Reader
  eval_scale: tuple[int, int]
  eval_size: tuple[int, int]
  label_size: tuple[int, int]
  image_pad_value: tuple[int, int, int]

  def resized_size(self, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """int32 (2,): mmcv rescale_size: factor min(long / long side, short / short side), int(x * s + 0.5)."""
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    if not any(self.eval_scale):
      return tf.cast(tf.stack([h, w]), tf.int32)
    long_edge, short_edge = float(max(self.eval_scale)), float(min(self.eval_scale))
    scale = tf.minimum(long_edge / tf.maximum(h, w), short_edge / tf.minimum(h, w))
    return tf.cast(tf.floor(tf.stack([h * scale, w * scale]) + 0.5), tf.int32)

  def __call__(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    real = index < self.reader.num_samples
    image, label, name = self.reader.load(tf.where(real, index, tf.zeros_like(index)))
    label_size = tf.shape(label)
    image_size = self.resized_size(label_size[0], label_size[1])
    image = resample.resize_image(image, image_size)
    image = tf.cond(real, lambda: image, lambda: tf.zeros_like(image))
    label = tf.cond(real, lambda: label, lambda: tf.fill(tf.shape(label), tf.constant(transforms.IGNORE, tf.uint8)))
    scaled = ' after config.data.eval_scale' if any(self.eval_scale) else ''

    def too_large(size, limit, what, key):
      def message():
        return tf.strings.join([
            name, f': {what} is ', checks.as_string(size[0]), 'x', checks.as_string(size[1]),
            f' (HxW){scaled if what == "image" else ""}, larger than config.{key}={tuple(limit)}; set '
            f'--config.{key} to at least the largest {what} size of the eval split'])
      return checks.check(tf.reduce_all(size <= tf.constant(limit, tf.int32)), message)

    with tf.control_dependencies([too_large(image_size, self.eval_size, 'image', 'data.eval_size'),
                                  too_large(label_size, self.label_size, 'label',
                                            'data.eval_label_size' if self.label_size != self.eval_size
                                            else 'data.eval_size')]):
      image = tf.pad(image, [[0, self.eval_size[0] - image_size[0]], [0, self.eval_size[1] - image_size[1]], [0, 0]])
      inside = ((tf.range(self.eval_size[0]) < image_size[0])[:, None]
                & (tf.range(self.eval_size[1]) < image_size[1])[None, :])
      image = tf.where(inside[..., None], image, tf.constant(self.image_pad_value, tf.uint8))
      label = tf.pad(label, [[0, self.label_size[0] - label_size[0]], [0, self.label_size[1] - label_size[1]]],
                     constant_values=transforms.IGNORE)
    return {'image': tf.ensure_shape(image, [*self.eval_size, 3]), 'label': tf.ensure_shape(label, self.label_size),
            'image_size': image_size, 'label_size': tf.cast(label_size, tf.int32)}


def eval_batches(data_config: ml_collections.ConfigDict, split: str, global_batch: int, *,
                 process_index: int | None = None, process_count: int | None = None,
                 worker_count: int | None = None, source=None) -> tuple[Iterator[dict[str, np.ndarray]], int]:
  """One pass over the split in this process's share of static-shape batches.

  The split is padded to a multiple of global_batch with all-ignore samples (never scored) and split into equal
  shares, so every process steps through the same number of batches.

  Returns:
    (iterator of {'image': uint8 (b, H, W, 3) padded with image_pad_value to (H, W) = data.eval_size,
     'label': uint8 (b, Lh, Lw) original-resolution labels padded with 255 to data.eval_label_size (eval_size
     when (0, 0)), 'image_size': int32 (b, 2) the image (h, w) after eval_scale, before padding,
     'label_size': int32 (b, 2) the original (h, w)}, number of batches), b = global_batch / process_count.
  """
  reader = readers.build(data_config, split, source)
  index, count = batching.process(process_index, process_count)
  if global_batch % count:
    raise ValueError(f'the eval batch {global_batch} does not split over {count} processes; set '
                     'config.eval.batch_size to a multiple of the number of processes')
  if not reader.num_samples:
    raise DataError(f'the {split!r} split holds no samples')
  num_batches = -(-reader.num_samples // global_batch)
  eval_size = tuple(data_config.eval_size)
  label_size = transforms.eval_label_size(data_config)
  sample = _EvalSample(reader, tuple(data_config.eval_scale), eval_size, label_size,
                        tuple(data_config.image_pad_value))
  workers = data_config.worker_count if worker_count is None else worker_count
  dataset = batching.finish(tf.data.Dataset.range(index, num_batches * global_batch, count), sample,
                            global_batch // count, workers, data_config.worker_buffer_size)
  return _eval_iterator(dataset, reader, index, count, global_batch // count), num_batches


def _eval_iterator(dataset: tf.data.Dataset, reader: readers.Reader, index: int, count: int,
                   batch: int) -> Iterator[dict[str, np.ndarray]]:
  iterator = dataset.as_numpy_iterator()
  position = 0
  while True:
    try:
      element = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      indices = index + count * np.arange(position, position + batch)
      raise reader.batch_error(e, indices[indices < reader.num_samples]) from e
    position += batch
    yield element
