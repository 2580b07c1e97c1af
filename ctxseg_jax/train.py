"""train(config, workdir): restore-or-init, then the jitted step in a loop with logging, eval and checkpoints.

One trainer per workdir: process 0 holds <workdir>/trainer.lock while it runs (storage.TrainerLock), released on
return, exception and SIGTERM. Resuming is exact: the train state, the data iterator position and the step come
back from the latest checkpoint that restores, and the dropout key of step t is fold_in(key(seed), t), so an
interrupted run ends where an uninterrupted one does.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from typing import Sequence

import jax
import ml_collections
from etils import epath

from ctxseg_jax import experiment, optim, parallel, reporting, storage
from ctxseg_jax.checkpoints import DATA_STREAM_KEY, IMPORTED_KEY, Checkpointer
from ctxseg_jax import config as config_lib
from ctxseg_jax.config import ConfigError
from ctxseg_jax.data import datasets, pipeline
from ctxseg_jax.evaluate import Evaluator
from ctxseg_jax.progress import ProgressWindow


class _Preemption:
  """Notices SIGTERM (a preempted TPU VM; systemd or SLURM stopping the job) and, on a single process, Ctrl-C
  (SIGINT), so the loop saves at the next step boundary and exits cleanly. A second Ctrl-C stops at once
  (KeyboardInterrupt), without saving. Data worker processes ignore both signals (pipeline._init_worker): when the
  whole process group is signalled, they keep serving batches until the trainer has saved and stops them.

  With several processes, SIGTERM is left to the handler of JAX's coordination service (installed by
  jax.distributed.initialize): a notice to any one process reaches every process, and all stop at the same step
  (Checkpointer.reached_preemption). A Python handler would replace it, and the other processes would never know.
  """

  def __init__(self):
    self.requested = threading.Event()
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else ()
      for signum in signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested.is_set() and self.signal_name == 'SIGINT':
      raise KeyboardInterrupt
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
    self.requested.set()
    if signum == signal.SIGINT:  # os.write: print() may be running in the interrupted code
      os.write(2, b'\nCtrl-C: saving at the end of this step (press Ctrl-C again to stop without saving)\n')

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  @contextlib.contextmanager
  def stops_a_failure(self, saved: bool):
    """Turns a failure inside into _StoppedBySignal when a stop signal came first and the step is saved (`saved`):
    a signal to the process group also reaches data workers that are still starting (a run's first batch, each
    evaluation's workers) and may not ignore it yet (pipeline._init_worker), so the pipeline fails with them."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if saved and self.requested.is_set():
        raise _StoppedBySignal() from e
      raise

  def reached(self, checkpointer: Checkpointer, step: int) -> bool:
    if jax.process_count() > 1:  # every host must agree on the step: use the coordination service
      return checkpointer.reached_preemption(step)
    return self.requested.is_set()


def train(config: ml_collections.ConfigDict, workdir: str | epath.Path,
          devices: Sequence[jax.Device] | None = None, *, force_unlock: bool = False) -> dict[str, float]:
  """Trains to config.train.steps (or until SIGTERM or Ctrl-C) and returns the last eval metrics ({} if stopped
  early, after saving the current step).

  Refuses (storage.WorkdirError) a workdir it cannot write or one another trainer holds (see storage.TrainerLock;
  `force_unlock` takes the lock anyway)."""
  storage.check_writable(workdir)
  # The signal handlers from the start: a signal while compiling saves (or stops) at step one.
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
  checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints, best_metric=evaluator.headline,
                              damaged=config.train.damaged_checkpoints)

  data_stream = {'train_samples': len(train_source), 'process_count': jax.process_count()}
  if checkpointer.latest_step() is not None:
    start_step, state = checkpointer.restore(
        exp.abstract_state(), data_iter,
        check_config=lambda step, saved: _check_resumable(checkpointer, saved, config, data_stream))
    reporting.console(f'Resumed from step {start_step} ({checkpointer.directory})')
  else:
    start_step, state = 0, exp.init_state()
    if config.model.pretrained:
      state = _from_pretrained(exp, state)
  writer = reporting.MetricWriter(workdir, resume_step=start_step if start_step else None,
                                  fresh_start=not start_step)
  reporting.console(f'{config.name}: {exp.info.name} ({len(train_source)} train images, '
                    f'{exp.info.num_classes} classes), '
                    f'{sum(x.size for x in jax.tree.leaves(state.params)):,} parameters, {mesh.devices.size} '
                    f'device(s) on {jax.process_count()} process(es), global batch {config.train.batch_size}, '
                    f'{total_steps} steps')

  schedule = optim.lr_schedule(config.optim, total_steps)
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
          checkpointer.save(step, state, data_iter, config, data_stream=data_stream)
        _report_stop(preemption, checkpointer)
        return {}
      with preemption.stops_a_failure(step == last_saved):
        host_batch = next(data_iter)
      batch = parallel.to_global(host_batch, mesh)
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
        checkpointer.save(step, state, data_iter, config, data_stream=data_stream)
        writer.flush()  # on gs:// the records wait for a rewrite: those up to a checkpoint must outlive a kill
        last_saved = step
      if do_eval:
        with preemption.stops_a_failure(step == last_saved):
          results = evaluator.run({'params': state.params, 'batch_stats': state.batch_stats})
        # Ranks the checkpoint for retention: mIoU, or a classifier's top-1 accuracy.
        checkpointer.record_metrics(step, {evaluator.headline: results[evaluator.headline]})
        evaluator.report(step, results, writer)
        progress.restart_clock()
  except _StoppedBySignal:
    _report_stop(preemption, checkpointer)
    return {}
  finally:
    pipeline.close(data_iter)
    try:
      checkpointer.wait()
    finally:
      checkpointer.close()
      writer.close()
  return results


class _StoppedBySignal(Exception):
  """A failure that a stop signal caused, at a step already saved (_Preemption.stops_a_failure)."""


def _report_stop(preemption: _Preemption, checkpointer: Checkpointer) -> None:
  """The line a run stopped by a signal ends with, once its checkpoint is written."""
  checkpointer.wait()
  name = preemption.signal_name or 'SIGTERM'
  what = 'Interrupted' if name == 'SIGINT' else 'Preempted'
  last = checkpointer.latest_step()
  if last is None:
    reporting.console(f'{what} ({name}) before the first step; nothing to save; exiting.')
  else:
    reporting.console(f'{what} ({name}): saved step {last} to {checkpointer.directory}; exiting. Run the same '
                      'command to resume.')


def _from_pretrained(exp: experiment.Experiment, state):
  """`state` with the backbone (or the whole model) read from config.model.pretrained; the rest, the optimizer
  state included, as initialised."""
  from ctxseg_jax.weights import pretrained
  model = exp.config.model
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  imported = pretrained.load(model.pretrained, model, pretrained.shapes(variables), layout=model.pretrained_layout,
                             skip=model.pretrained_skip)
  variables = jax.device_put(pretrained.overlay(variables, imported), parallel.replicated(exp.mesh))
  reporting.console(f'Initialised {pretrained.describe(imported)}')
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


# Keys whose change would make the saved data iterator position or the step mean something else: the stream's
# order and augmentation draws (seed), the samples one step takes (global batch), grain's iterator state (worker
# processes), and which samples the stream holds.
_RESUME_KEYS = ('seed', 'train.batch_size', 'data.worker_count', 'data.name', 'data.train_split')
_SYNTHETIC_RESUME_KEYS = ('data.synthetic.num_train', 'data.synthetic.image_size', 'data.synthetic.seed')


def _check_resumable(checkpointer: Checkpointer, saved: dict, config: ml_collections.ConfigDict,
                     data_stream: dict[str, int]) -> None:
  """Refuses (ConfigError, one line) a resume whose config or dataset differs from the checkpoint's (`saved`: its
  config) in what the saved optimizer and data-iterator states depend on: the LR groups (the optimizer state is
  grouped by them), and every setting that changes the data stream or what a step is (_RESUME_KEYS, the split's
  size, the number of processes), naming each with its saved and its new value."""
  saved_data, saved_optim = saved.get('data', {}), saved.get('optim', {})
  where = f'the checkpoint in {checkpointer.directory}'
  if IMPORTED_KEY in saved:
    raise ConfigError(f'{where} holds imported weights, not a training run: train from them in a new workdir with '
                      f'--config.model.pretrained={checkpointer.directory.parent}')
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
  keys = _RESUME_KEYS + (_SYNTHETIC_RESUME_KEYS if config.data.name in datasets.SYNTHETIC else ())
  changed, fixes = [], []
  for key in keys:
    saved_value, missing = saved, False
    for part in key.split('.'):
      if not isinstance(saved_value, dict) or part not in saved_value:
        missing = True  # a checkpoint from before the key existed
        break
      saved_value = saved_value[part]
    new_value = json.loads(json.dumps(config_lib.get(config, key)))
    if not missing and saved_value != new_value:
      changed.append(f'config.{key} was {saved_value!r}, now {new_value!r}')
      fixes.append(f'--config.{key}={saved_value}')
  saved_stream = saved.get(DATA_STREAM_KEY, {})
  if 'train_samples' in saved_stream and saved_stream['train_samples'] != data_stream['train_samples']:
    changed.append(f'the size of the {config.data.train_split!r} split was {saved_stream["train_samples"]} samples, '
                   f'now {data_stream["train_samples"]}')
  if 'process_count' in saved_stream and saved_stream['process_count'] != data_stream['process_count']:
    changed.append(f'the number of processes was {saved_stream["process_count"]}, now {data_stream["process_count"]}')
  if changed:
    fix = f'resume with {" ".join(fixes)}' if len(fixes) == len(changed) else 'resume with the same data and settings'
    raise ConfigError(f'cannot resume from {where}: {"; ".join(changed)} (the saved data iterator position and '
                      f'step depend on it); {fix}, or train in a new workdir')


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
