"""train(config, workdir): restore-or-init, then the jitted step in a loop with logging, eval and checkpoints.

One trainer per workdir: process 0 holds <workdir>/trainer.lock while it runs (storage.TrainerLock), released on
return, exception and SIGTERM. Resuming is exact: the train state, the data iterator position and the step come
back from the latest checkpoint that restores, and the dropout key of step t is fold_in(key(seed), t), so an
interrupted run ends where an uninterrupted one does.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from typing import Sequence

import jax
import ml_collections
from etils import epath

from ctxseg_jax import experiment, optim, parallel, reporting, storage
from ctxseg_jax.checkpoints import Checkpointer
from ctxseg_jax.config import ConfigError
from ctxseg_jax.data import datasets, pipeline
from ctxseg_jax.evaluate import Evaluator
from ctxseg_jax.progress import ProgressWindow


class _Preemption:
  """Notices SIGTERM (a preempted TPU VM) so the loop can save at the current step and exit cleanly."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, checkpointer: Checkpointer, step: int) -> bool:
    if jax.process_count() > 1:  # every host must agree on the step: use the coordination service
      return checkpointer.reached_preemption(step)
    return self.requested.is_set()


def train(config: ml_collections.ConfigDict, workdir: str | epath.Path,
          devices: Sequence[jax.Device] | None = None, *, force_unlock: bool = False) -> dict[str, float]:
  """Trains to config.train.steps (or until SIGTERM) and returns the last eval metrics ({} if preempted).

  Refuses (storage.WorkdirError) a workdir it cannot write or one another trainer holds (see storage.TrainerLock;
  `force_unlock` takes the lock anyway)."""
  storage.check_writable(workdir)
  with storage.TrainerLock(workdir, force=force_unlock), _Preemption() as preemption:
    return _train(config, workdir, devices, preemption)


def _train(config: ml_collections.ConfigDict, workdir: str | epath.Path, devices: Sequence[jax.Device] | None,
           preemption: _Preemption) -> dict[str, float]:
  exp = experiment.build(config, devices)
  mesh, total_steps = exp.mesh, config.train.steps
  per_process_batch = parallel.per_process_batch_size(config.train.batch_size, mesh, 'train.batch_size')
  train_source = datasets.build_source(config.data, config.data.train_split)
  data_iter = pipeline.train_iterator(train_source, config.data, per_process_batch, config.seed)
  evaluator = Evaluator(exp)
  checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints, damaged=config.train.damaged_checkpoints)

  if checkpointer.latest_step() is not None:
    start_step, state = checkpointer.restore(
        exp.abstract_state(), data_iter, check_config=lambda step, saved: _check_resumable(checkpointer, saved, config))
    reporting.console(f'Resumed from step {start_step} ({checkpointer.directory})')
  else:
    start_step, state = 0, exp.init_state()
  writer = reporting.MetricWriter(workdir, resume_step=start_step if start_step else None,
                                  fresh_start=not start_step)
  reporting.console(f'{config.name}: {exp.info.name} ({len(train_source)} train images, '
                    f'{exp.info.num_classes} classes), '
                    f'{sum(x.size for x in jax.tree.leaves(state.params)):,} parameters, {mesh.devices.size} '
                    f'device(s) on {jax.process_count()} process(es), global batch {config.train.batch_size}, '
                    f'{total_steps} steps')

  schedule = optim.poly_schedule(config.optim, total_steps)
  eval_every, checkpoint_every = config.train.eval_every, config.train.checkpoint_every

  def last_good() -> str:
    checkpointer.wait()
    last = checkpointer.latest_step()
    return f'the last good checkpoint is {"none" if last is None else f"step {last}"} in {checkpointer.directory}'

  progress = ProgressWindow(last_good)
  results = {}
  if start_step >= total_steps:
    reporting.console(f'Already trained to step {start_step}; evaluate it with --mode eval.')
  step = last_saved = start_step
  try:
    while step < total_steps:
      if preemption.reached(checkpointer, step):
        progress.fetch()
        if step != last_saved:
          checkpointer.save(step, state, data_iter, config)
        checkpointer.wait()
        reporting.console(f'Preempted (SIGTERM): saved step {step} to {checkpointer.directory}; exiting.')
        return {}
      batch = parallel.to_global(next(data_iter), mesh)
      if step == start_step:
        compile_start = time.time()
        state, step_metrics = exp.train_step(state, batch)
        jax.block_until_ready(step_metrics)
        reporting.console(f'Compiled and ran step {step + 1} in {time.time() - compile_start:.1f}s')
        progress.restart_clock()
      else:
        state, step_metrics = exp.train_step(state, batch)
      progress.add(step + 1, step_metrics, timed=step != start_step)
      step += 1

      is_last = step == total_steps
      do_eval = is_last or (eval_every and step % eval_every == 0)
      do_log = is_last or step % config.train.log_every == 0
      do_save = do_eval or step % checkpoint_every == 0
      if do_save:
        progress.fetch()
      if do_log:
        means, images_per_s, eta = progress.summary(config.train.batch_size, total_steps - step)
        lr = float(schedule(step - 1))
        reporting.console(f'step {step}/{total_steps}  loss {means["loss"]:.4f}  lr {lr:.3g}  '
                          f'{images_per_s:.1f} img/s  ETA {_duration(eta)}')
        writer.write(step, 'train', {**means, 'lr': lr, 'images_per_s': images_per_s})
      if do_save:  # before evaluating: an evaluation that fails does not cost this step's checkpoint
        checkpointer.save(step, state, data_iter, config)
        last_saved = step
      if do_eval:
        results = evaluator.run({'params': state.params, 'batch_stats': state.batch_stats})
        checkpointer.record_metrics(step, {'miou': results['miou']})  # ranks the checkpoint for retention
        evaluator.report(step, results, writer)
        progress.restart_clock()
  finally:
    pipeline.close(data_iter)
    try:
      checkpointer.wait()
    finally:
      checkpointer.close()
      writer.close()
  return results


def _check_resumable(checkpointer: Checkpointer, saved: dict, config: ml_collections.ConfigDict) -> None:
  """What the saved optimizer and data-iterator states need of the config (`saved`: the checkpoint's config): the
  same LR groups (the optimizer state is grouped by them) and, for grain's iterator state, the same number of worker
  processes."""
  saved_data, saved_optim = saved.get('data', {}), saved.get('optim', {})
  where = f'the checkpoint in {checkpointer.directory}'
  if saved_data.get('loader', 'grain') != 'grain':
    raise ConfigError(f'{where} was written by the tf.data loader, whose data iterator state grain cannot resume; '
                      'evaluate it with --mode eval, or train in a new workdir')
  if 'lr_mults' not in saved_optim:
    raise ConfigError(f'{where} was written before optimizer groups were set by config.optim.lr_mults, so its '
                      'optimizer state cannot be resumed; evaluate it with --mode eval, or train in a new workdir')
  saved_mults = [list(entry) for entry in saved_optim['lr_mults']]
  if saved_mults != [list(entry) for entry in config.optim.lr_mults]:
    raise ConfigError(f'{where} was written with config.optim.lr_mults={saved_mults}; the optimizer state is grouped '
                      f'by them: resume with --config.optim.lr_mults="{tuple(map(tuple, saved_mults))}"')
  saved_workers = saved_data.get('worker_count')
  if saved_workers is not None and saved_workers != config.data.worker_count:
    raise ConfigError(f'{where} was written with config.data.worker_count={saved_workers}; resume with '
                      f'--config.data.worker_count={saved_workers} (the data iterator state depends on it)')


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
