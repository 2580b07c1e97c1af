"""The trainer's entry to the input pipelines: `config.data.loader` picks grain (`pipeline`) or tf.data (`tfdata`).

Both give the same batch contract (see pipeline.train_iterator and pipeline.eval_batches) and iterators that
orbax checkpoints through grain's handler. TensorFlow is imported only when the tf.data loader is chosen. A
split's source is built once (`Split`) and reused by every pass over it: listing a large split on GCS is slow.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import ml_collections

from ctxseg_jax.data import datasets
from ctxseg_jax.data import pipeline


def _tfdata():
  from ctxseg_jax.data import tfdata  # imports TensorFlow
  return tfdata


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of the configured dataset: its name, its source (None where TFDS reads it) and its size."""
  name: str
  source: datasets.SegmentationSource | None
  size: int


def split(data_config: ml_collections.ConfigDict, name: str) -> Split:
  """Lists `name` once (decodes nothing); TFDS datasets report their size from the builder."""
  if data_config.name == 'cityscapes_tfds':
    return Split(name, None, _tfdata().num_examples(data_config, name))
  source = datasets.build_source(data_config, name)
  return Split(name, source, len(source))


def train_iterator(data_config: ml_collections.ConfigDict, train: Split, per_process_batch: int, seed: int) -> Any:
  """This process's endless, checkpointable stream of {'image', 'label'} train batches."""
  if data_config.loader == 'tfdata':
    return _tfdata().train_iterator(data_config, train.name, per_process_batch, seed, source=train.source)
  return pipeline.train_iterator(train.source, data_config, per_process_batch, seed)


def eval_batches(data_config: ml_collections.ConfigDict, evaluation: Split,
                 global_batch: int) -> tuple[Iterator[dict], int]:
  """One static-shape pass over the eval split: (this process's batches, number of batches)."""
  if data_config.loader == 'tfdata':
    return _tfdata().eval_batches(data_config, evaluation.name, global_batch, source=evaluation.source)
  return pipeline.eval_batches(evaluation.source, data_config, global_batch)


def close(iterator: Any) -> None:
  """Stops an iterator's workers (grain processes or tf.data threads)."""
  pipeline.close(iterator)
