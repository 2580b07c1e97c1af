"""The train stream: this process's endless, shuffled, augmented batches, deterministic and exactly resumable.

The stream is a pure function of (seed, this process's shard, position): position p is epoch e = p // n (n =
shard size), element p mod n of a stateless permutation of the shard (tf.random.experimental.index_shuffle)
keyed by (seed, e); its augmentation draws come from stateless random ops keyed by (seed, process index, p). The
iterator state is the number of samples consumed; set_state starts the graph at that position without reading
the samples before it. This is exact for every source, TFDS included (read by index), and the batches do not
depend on worker_count or the buffer size. The stream differs from the grain loader's (different random
generators). Sharding follows grain's `_process_shard`: process i of c takes records i, i + c, ... of the first
len - len % c records.
"""
from __future__ import annotations

import json
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from ctxseg_jax.data.tfdata import augment as augment_lib
from ctxseg_jax.data.tfdata import batching
from ctxseg_jax.data.tfdata import draws
from ctxseg_jax.data.tfdata import readers

STATE_FORMAT = 'ctxseg_jax.tfdata/1'
_END = 1 << 62  # the train stream's positions: endless in practice


class TfDataIterator:
  """An endless iterator of {'image': uint8 (b, crop_h, crop_w, 3), 'label': uint8 (b, crop_h, crop_w)} numpy
  batches: this process's share of the train stream (see the module docstring).

  The state (`get_state`, JSON bytes; grain's orbax checkpoint handler saves it) is the number of samples
  consumed; `set_state` restarts the graph there. The tf.data pipeline is built on the first `next` (or
  `start_prefetch`).
  """

  def __init__(self, reader: readers.Reader, augment: augment_lib.TrainAugment, *, batch_size: int, seed: int,
               process_index: int, process_count: int, worker_count: int, buffer_size: int):
    self._reader, self._augment, self._batch_size, self._seed = reader, augment, batch_size, seed
    self._process_index, self._process_count = process_index, process_count
    self._worker_count, self._buffer_size = worker_count, buffer_size
    self.shard_size = (reader.num_samples - reader.num_samples % process_count) // process_count
    self._position = 0
    self._iterator = None

  def _index(self, position: tf.Tensor) -> tf.Tensor:
    """The dataset index at stream position `position` (int64 scalar)."""
    epoch, offset = position // self.shard_size, position % self.shard_size
    key = draws.fold(draws.root_key(self._seed, draws.ORDER), epoch)
    local = tf.random.experimental.index_shuffle(offset, key, tf.constant(self.shard_size - 1, tf.int64))
    return self._process_index + self._process_count * local

  def sample_indices(self, start: int, count: int) -> np.ndarray:
    """int64 (count,): the dataset indices of stream positions start .. start + count - 1."""
    positions = tf.range(start, start + count, dtype=tf.int64)
    return np.array([int(self._index(p)) for p in positions], np.int64)

  def _sample(self, position: tf.Tensor) -> dict[str, tf.Tensor]:
    image, label, _ = self._reader.load(self._index(position))
    key = draws.fold(draws.fold(draws.root_key(self._seed, draws.AUGMENT), self._process_index), position)
    image, label = self._augment(image, label, key)
    return {'image': image, 'label': label}

  def _dataset(self, start: int) -> tf.data.Dataset:
    return batching.finish(tf.data.Dataset.range(start, _END), self._sample, self._batch_size, self._worker_count,
                   self._buffer_size)

  def __iter__(self) -> TfDataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self.start_prefetch()
    try:
      batch = next(self._iterator)
    except tf.errors.OpError as e:
      raise self._reader.batch_error(e, self.sample_indices(self._position, self._batch_size)) from e
    self._position += self._batch_size
    return batch

  def start_prefetch(self) -> None:
    """Builds the pipeline at the current position (with workers, it starts computing batches)."""
    if self._iterator is None:
      self._iterator = self._dataset(self._position).as_numpy_iterator()

  def _layout(self) -> dict[str, Any]:
    return {'seed': self._seed, 'process_index': self._process_index, 'process_count': self._process_count,
            'shard_size': self.shard_size}

  def get_state(self) -> bytes:
    return json.dumps({'format': STATE_FORMAT, 'position': self._position, **self._layout()}).encode()

  def set_state(self, state: bytes) -> None:
    saved = json.loads(state.decode() if isinstance(state, bytes) else state)
    if saved.get('format') != STATE_FORMAT:
      raise ValueError(f'not a tfdata iterator state (format {saved.get("format")!r}, expected {STATE_FORMAT!r}); '
                       'was the checkpoint written with --config.data.loader=grain?')
    mismatched = {k: (saved.get(k), v) for k, v in self._layout().items() if saved.get(k) != v}
    if mismatched:
      details = ', '.join(f'{k} saved {s!r}, now {n!r}' for k, (s, n) in mismatched.items())
      raise ValueError(f'the data iterator state does not fit this run ({details}); resume with the config.seed, '
                       'dataset split and number of processes the checkpoint was written with')
    self.close()
    self._position = int(saved['position'])

  def close(self) -> None:
    self._iterator = None


def train_iterator(data_config: ml_collections.ConfigDict, split: str, per_process_batch: int, seed: int, *,
                   process_index: int | None = None, process_count: int | None = None,
                   worker_count: int | None = None, source=None) -> TfDataIterator:
  """This process's endless, shuffled, augmented train stream (see TfDataIterator).

  Args:
    data_config: config.data.
    split: the split to read (config.data.train_split).
    per_process_batch: samples per batch on this process.
    seed: the stream's seed (config.seed).
    process_index, process_count: default to this JAX process; tests pass them to simulate several hosts.
    worker_count: overrides data_config.worker_count.
    source: the split's source when already built (default: datasets.build_source, or TFDS for cityscapes_tfds).
  """
  reader = readers.build(data_config, split, source)
  index, count = batching.process(process_index, process_count)
  iterator = TfDataIterator(reader, augment_lib.TrainAugment.from_config(data_config), batch_size=per_process_batch,
                            seed=seed, process_index=index, process_count=count,
                            worker_count=data_config.worker_count if worker_count is None else worker_count,
                            buffer_size=data_config.worker_buffer_size)
  if iterator.shard_size < per_process_batch:
    raise ValueError(f'the {split!r} split gives this process {iterator.shard_size} samples, fewer than one batch '
                     f'({per_process_batch}); lower config.train.batch_size')
  return iterator
