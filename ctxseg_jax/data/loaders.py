"""The trainer's entry to the input pipelines: `config.data.loader` picks grain (`pipeline`) or tf.data (`tfdata`).

Both give the same batch contract (see pipeline.train_iterator and pipeline.eval_batches) and iterators that
orbax checkpoints through grain's handler. TensorFlow is imported only when the tf.data loader is chosen.
"""
from __future__ import annotations

from typing import Any, Iterator

import ml_collections

from ctxseg_jax.data import datasets
from ctxseg_jax.data import pipeline


def _tfdata():
  from ctxseg_jax.data import tfdata  # imports TensorFlow
  return tfdata


def split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
  """The number of samples in `split` (lists files or reads metadata; decodes nothing)."""
  if data_config.name == 'cityscapes_tfds':
    return _tfdata().num_examples(data_config, split)
  return len(datasets.build_source(data_config, split))


def train_iterator(data_config: ml_collections.ConfigDict, per_process_batch: int, seed: int) -> Any:
  """This process's endless, checkpointable stream of {'image', 'label'} train batches."""
  split = data_config.train_split
  if data_config.loader == 'tfdata':
    return _tfdata().train_iterator(data_config, split, per_process_batch, seed)
  return pipeline.train_iterator(datasets.build_source(data_config, split), data_config, per_process_batch, seed)


def eval_batches(data_config: ml_collections.ConfigDict, global_batch: int) -> tuple[Iterator[dict], int]:
  """One static-shape pass over the eval split: (this process's batches, number of batches)."""
  split = data_config.eval_split
  if data_config.loader == 'tfdata':
    return _tfdata().eval_batches(data_config, split, global_batch)
  return pipeline.eval_batches(datasets.build_source(data_config, split), data_config, global_batch)


def close(iterator: Any) -> None:
  """Stops an iterator's workers (grain processes or tf.data threads)."""
  pipeline.close(iterator)
