"""The tf.data plumbing the train and eval pipelines share.

Parallelism: `data.worker_count` is the number of samples decoded and augmented in parallel (map
num_parallel_calls; each op single-threaded); 0 runs everything sequentially in the calling thread, with no
prefetching. With workers, `data.worker_buffer_size` batches are prefetched.
"""
from __future__ import annotations

import jax
import tensorflow as tf


def _options(worker_count: int) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  if not worker_count:  # everything in the calling thread: no parallelism or prefetching added by tf.data
    options.experimental_optimization.map_parallelization = False
    options.experimental_optimization.inject_prefetch = False
    options.autotune.enabled = False
  return options


def finish(dataset: tf.data.Dataset, fn, batch: int, worker_count: int, buffer_size: int) -> tf.data.Dataset:
  """`dataset` mapped by `fn` (in order, `worker_count` samples at a time), batched without a remainder and
  prefetched when there are workers."""
  if worker_count:
    dataset = dataset.map(fn, num_parallel_calls=worker_count, deterministic=True)
  else:
    dataset = dataset.map(fn)
  dataset = dataset.batch(batch, drop_remainder=True)
  if worker_count:
    dataset = dataset.prefetch(max(buffer_size, 1))
  return dataset.with_options(_options(worker_count))


def process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(process index, process count): the given values, or this JAX process's where None."""
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)
