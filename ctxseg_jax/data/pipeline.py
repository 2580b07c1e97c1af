"""grain input pipelines: an endless, shuffled, per-process-sharded, checkpointable train stream and a static-shape
eval pass.

Built with grain's dataset API: source -> shuffle -> repeat -> augment (one global stream) -> batch ->
this process's share of each global batch, then worker processes (`mp_prefetch`) that compute whole batches of that
same stream. Every random choice (shuffle order, augmentation) derives from (seed, position in the global stream),
so the global batches are identical whatever the number of processes or workers: P processes with B / P samples
each train exactly as one process with B. Each process reads only the samples of its share. The iterator
(get_state/set_state, saved in every checkpoint) resumes exactly; resuming needs the worker count and the number
of processes the state was saved with.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
import time
from typing import Iterator

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from ctxseg_jax.data import eval_plan, transforms
from ctxseg_jax.data.datasets.base import SegmentationSource, source_task


class PlannedEvalSource:
  """A split in the positions of an eval_plan.EvalPlan: each sample gets its 'index' in the split and, with
  bucketed shapes, the 'canvas' and 'label_canvas' of its batch (transforms.EvalPreprocess pads to them). Padding
  positions hold a black image of the batch's last image's size with only ignore labels (never scored), and an
  index >= the split's length.

  A plan's length is a whole number of global batches, so every process steps through the same number of
  batches, of the same shapes.
  """

  def __init__(self, source: SegmentationSource, plan: eval_plan.EvalPlan):
    self.source, self.plan = source, plan

  def __len__(self) -> int:
    return len(self.plan.order)

  def __getitem__(self, position: int) -> dict:
    index = int(self.plan.order[position])
    if index < len(self.source):
      sample = {**self.source[index], 'index': index}
    else:
      batch_start = position - position % self.plan.global_batch
      real = [int(i) for i in self.plan.order[batch_start:position] if i < len(self.source)]
      sample = self.source[real[-1] if real else 0]
      sample = {'image': np.zeros_like(sample['image']), 'name': 'padding', 'index': index,
                **({'label': np.full_like(sample['label'], transforms.IGNORE)} if 'label' in sample else {})}
    if self.plan.image_canvases is not None:
      batch = position // self.plan.global_batch
      sample['canvas'] = self.plan.image_canvases[batch]
      sample['label_canvas'] = self.plan.label_canvases[batch]
    return sample


def _process_batches(dataset: grain.MapDataset, global_batch: int, process_index: int | None,
                     process_count: int | None) -> grain.MapDataset:
  """This process's batches of a stream whose global batches are consecutive runs of `global_batch` records:
  process p of P gets records [p b, (p + 1) b) of each, b = global_batch / P, so that the global array assembled
  from the processes' batches in process order (parallel.to_global) is the global batch in stream order. A batch
  computes only its own records."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return dataset.batch(global_batch // count, drop_remainder=True)[index::count]


def _read_options(data_config: ml_collections.ConfigDict) -> grain.ReadOptions:
  """Each process (the main one, or each worker) prepares worker_buffer_size batches ahead, one per thread.

  grain's defaults (16 threads, 500 prefetched elements) would hold up to 500 batches per process: gigabytes
  for Cityscapes-sized crops.
  """
  ahead = max(data_config.worker_buffer_size, 1)
  return grain.ReadOptions(num_threads=ahead, prefetch_buffer_size=ahead)


def _with_workers(dataset: grain.IterDataset, worker_count: int,
                  worker_buffer_size: int) -> grain.DatasetIterator:
  if not worker_count:
    return iter(dataset)
  if not flags.FLAGS.is_parsed():
    raise RuntimeError('grain worker processes read absl flags, which this process has not parsed: run inside '
                       'absl.app.run (as python -m ctxseg_jax.main does), call absl.flags.FLAGS.mark_as_parsed() '
                       'once after your own flag parsing, or set config.data.worker_count=0')
  options = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer_size)
  _kill_workers_at_exit()
  return iter(dataset.mp_prefetch(options, worker_init_fn=_init_worker))


_WORKER_NAME = 'grain-process-prefetch'  # grain's name for its worker processes
_WORKER_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _init_worker(worker_index: int, worker_count: int) -> None:
  """Runs first in each worker process: SIGTERM and SIGINT are left to the trainer.

  A preemption (systemd, SLURM, a TPU maintenance event) or Ctrl-C signals the whole process group. Workers that
  died of it would take their prefetched batches (leaked shared memory) and, when the trainer is waiting for the
  next batch, the run with them; instead the trainer saves at its next step boundary and then stops the workers
  (pipeline.close). A worker exits by itself when the trainer is gone (e.g. killed with SIGKILL).
  """
  del worker_index, worker_count
  for signum in _WORKER_SIGNALS:
    signal.signal(signum, signal.SIG_IGN)
  parent = os.getppid()

  def exit_with_parent():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=exit_with_parent, daemon=True, name='exit-with-parent').start()


_exit_hook_registered = False


def _kill_workers_at_exit() -> None:
  """At interpreter exit, kills grain workers that no iterator closed: they ignore SIGTERM, which is how
  multiprocessing stops daemon processes at exit (it would then wait for them forever). Registered after
  multiprocessing's own exit hook, so it runs before it."""
  global _exit_hook_registered
  if _exit_hook_registered:
    return

  def kill_workers():
    for process in multiprocessing.active_children():
      if process.name.startswith(_WORKER_NAME):
        process.kill()
        process.join(timeout=5)

  atexit.register(kill_workers)
  _exit_hook_registered = True


def train_augment(data_config: ml_collections.ConfigDict, task: str) -> grain.transforms.RandomMap:
  """The training augmentation of config.data for a dataset of `task` (DatasetInfo.task)."""
  if task == 'classification':
    return transforms.ClassificationAugment(crop_size=tuple(data_config.crop_size), padding=data_config.crop_padding,
                                            flip=data_config.flip, image_pad_value=data_config.image_pad_value)
  return transforms.TrainAugment.from_config(data_config)


def eval_preprocess(data_config: ml_collections.ConfigDict, eval_config: ml_collections.ConfigDict | None,
                    task: str) -> transforms.EvalPreprocess | transforms.ClassificationEvalPreprocess:
  """The eval transform of config.data (and config.eval) for a dataset of `task` (DatasetInfo.task)."""
  if task == 'classification':
    return transforms.ClassificationEvalPreprocess(tuple(data_config.eval_size), data_config.image_pad_value)
  return transforms.EvalPreprocess.from_config(data_config, eval_config)


def train_iterator(source: SegmentationSource, data_config: ml_collections.ConfigDict, per_process_batch: int,
                   seed: int, *, process_index: int | None = None, process_count: int | None = None,
                   worker_count: int | None = None) -> grain.DatasetIterator:
  """An endless iterator of {'image': uint8 (b, h, w, 3), 'label': uint8 (b, h, w)} batches for this process
  ('label' int32 (b,) for a classification dataset).

  It supports get_state/set_state; orbax saves it with grain's checkpoint handler. process_index/process_count
  default to this JAX process; tests pass them to simulate several hosts.
  """
  count = jax.process_count() if process_count is None else process_count
  if len(source) < per_process_batch * count:
    raise ValueError(f'the {source.split!r} split has {len(source)} samples, fewer than one batch '
                     f'({per_process_batch * count}); lower config.train.batch_size')
  stream = (grain.MapDataset.source(source).seed(seed).shuffle().repeat()
            .random_map(train_augment(data_config, source_task(source))))
  dataset = _process_batches(stream, per_process_batch * count, process_index, count).to_iter_dataset(
      _read_options(data_config))
  workers = data_config.worker_count if worker_count is None else worker_count
  return _with_workers(dataset, workers, data_config.worker_buffer_size)


def eval_batches(source: SegmentationSource, data_config: ml_collections.ConfigDict, global_batch: int,
                 *, eval_config: ml_collections.ConfigDict | None = None, process_index: int | None = None,
                 process_count: int | None = None, worker_count: int | None = None,
                 plan: eval_plan.EvalPlan | None = None) -> tuple[Iterator[dict], int]:
  """One pass over the split in this process's share of static-shape batches, in the order and shapes of `plan`
  (default: eval_plan.plan of the configs; an evaluation that runs repeatedly computes it once).

  Returns (iterator of batches, number of batches); each batch holds b = global_batch / process_count samples
  {'image': uint8 (b, *eval_size, 3), 'label': uint8 (b, *label size) at original resolution, 'image_size':
  int32 (b, 2), 'original_size': int32 (b, 2), 'index': int32 (b,) in the split} (see transforms.EvalPreprocess;
  no 'label' for an unlabelled source). With `eval_config` (config.eval) of a protocol that resizes on device, the
  images are the originals and 'scale_sizes' (b, S, 2) is added. With eval.shape_bucket (single-scale whole-image
  evaluation), images come in the order of eval_plan.bucketed_plan, and each batch's images and labels are padded
  to its own canvases instead of eval_size and the label size. A classification dataset's batches are
  {'image': uint8 (b, *eval_size, 3), 'label': int32 (b,), 'index': int32 (b,)} (transforms.
  ClassificationEvalPreprocess), in the split's order.
  """
  count = jax.process_count() if process_count is None else process_count
  plan = plan or eval_plan.plan(source, data_config, global_batch, eval_config)
  padded = grain.MapDataset.source(PlannedEvalSource(source, plan))
  samples = padded.map(eval_preprocess(data_config, eval_config, source_task(source)))
  dataset = _process_batches(samples, global_batch, process_index, count).to_iter_dataset(_read_options(data_config))
  workers = data_config.worker_count if worker_count is None else worker_count
  return _closing(_with_workers(dataset, workers, data_config.worker_buffer_size)), plan.num_batches


def _closing(iterator: grain.DatasetIterator) -> Iterator[dict]:
  """Yields every batch, then stops the iterator's worker processes."""
  try:
    yield from iterator
  finally:
    close(iterator)


def close(iterator) -> None:
  """Stops an iterator's worker processes (a no-op for in-process iterators)."""
  if hasattr(iterator, 'close'):
    iterator.close()
