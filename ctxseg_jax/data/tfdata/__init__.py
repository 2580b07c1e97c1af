"""tf.data input pipelines (`config.data.loader='tfdata'`): the batch contract of the grain loader in
`pipeline.py`, computed by a TensorFlow graph in threads instead of Python worker processes.

  * `readers`: a split read by index in graph (files, packed records, TFDS Cityscapes, any other source through
    tf.numpy_function), chosen from `config.data.name`; `num_examples` counts a split.
  * `decode`: in-graph decoding of images and labels (8-bit grey and palette PNGs) and label maps.
  * `augment`: the training augmentation (rescale, crop with cat_max_ratio, flip, photometric distortion), built
    on `resample` (the crop window's resize; how it differs from PIL), `distortion` (PhotoMetricDistortion) and
    `draws` (stateless random draws).
  * `train`: the deterministic, exactly resumable train stream (`train_iterator`, `TfDataIterator`).
  * `evaluation`: one pass over a split in static-shape eval batches (`eval_batches`).
  * `batching` (map, batch, prefetch; what `data.worker_count` means) and `checks` (graph checks that fail with
    a DataError naming the file).

Raw label values outside the map's valid set, image/label size mismatches and undecodable files raise a
DataError naming the file.

TensorFlow is imported by this package only; GPUs and TPUs are hidden from it so that it leaves accelerator
memory to JAX.
"""
from __future__ import annotations

import tensorflow as tf


def _hide_accelerators() -> None:
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):  # TF already initialised its devices, or knows no such device type
      pass


_hide_accelerators()

from ctxseg_jax.data.tfdata.augment import TrainAugment  # noqa: E402
from ctxseg_jax.data.tfdata.decode import decode_image, decode_label  # noqa: E402
from ctxseg_jax.data.tfdata.distortion import distort  # noqa: E402
from ctxseg_jax.data.tfdata.evaluation import eval_batches  # noqa: E402
from ctxseg_jax.data.tfdata.readers import TFDS_NAME, TFDS_SPLITS, TFDS_ZIPS, num_examples  # noqa: E402
from ctxseg_jax.data.tfdata.resample import resize_window  # noqa: E402
from ctxseg_jax.data.tfdata.train import STATE_FORMAT, TfDataIterator, train_iterator  # noqa: E402

__all__ = [
    'STATE_FORMAT', 'TFDS_NAME', 'TFDS_SPLITS', 'TFDS_ZIPS', 'TfDataIterator', 'TrainAugment', 'decode_image',
    'decode_label', 'distort', 'eval_batches', 'num_examples', 'resize_window', 'train_iterator',
]
