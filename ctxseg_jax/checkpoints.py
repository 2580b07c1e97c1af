"""Orbax checkpoints of the train state, the data iterator and the config, under <workdir>/checkpoints.

Each checkpoint step holds three items: 'state' (step, params, batch_stats, opt_state), 'data_iter' (this
process's grain iterator position) and 'config' (the run's config as JSON). Saves are asynchronous and atomic
(orbax writes to a temporary directory and renames it). The last `keep` checkpoints are kept, plus the one with
the best eval mIoU. A step is saved before it is evaluated (an evaluation that fails costs no checkpoint), so its
metrics are recorded afterwards, in <workdir>/checkpoint_metrics.json, which the retention policy reads.

A checkpoint that cannot be restored (a file of one of its items missing or truncated) is damaged: restoring says
which step and why in one line, and training falls back to the newest step that restores, moving the damaged ones
to <workdir>/checkpoints_damaged/<step> (nothing is deleted).

A save that fails for lack of space or permission raises storage.WriteError naming the step, the path and the
cause (at the next save or wait: saves are asynchronous); the checkpoints saved before stay intact, and orbax's
tracebacks of that failure are not logged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import Any, Callable, Sequence

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from ctxseg_jax import reporting, storage

STATE, DATA_ITER, CONFIG = 'state', 'data_iter', 'config'
METRICS_FILE = 'checkpoint_metrics.json'
DAMAGED_DIR = 'checkpoints_damaged'
DATA_STREAM_KEY = '_data_stream'  # in the saved config: see Checkpointer.save
IMPORTED_KEY = '_imported'  # in the saved config of imported weights (ctxseg_jax.tools.import_weights)


class CheckpointMismatchError(ValueError):
  """A checkpoint whose parameters do not fit the model being restored into; names every mismatch."""


class CheckpointDamagedError(RuntimeError):
  """A checkpoint (or every checkpoint) that cannot be restored; names the damaged steps and the ones that restore."""


class _Damaged(Exception):
  """Internal: `step` cannot be restored; `reason` says which item and why, in one line."""

  def __init__(self, step: int, reason: str):
    super().__init__(f'step {step}: {reason}')
    self.step, self.reason = step, reason


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
  """<workdir>/checkpoints, absolute (orbax requires it; a relative path is taken from the current directory)."""
  path = epath.Path(workdir)
  if '://' not in str(workdir):
    path = path.absolute()
  return path / 'checkpoints'


@dataclasses.dataclass
class _BestRecorded:
  """orbax's BestN (n=1, checkpoints without metrics not kept for it) over the metrics recorded after each save
  (`recorded`, by step), or for older checkpoints the metrics orbax saved with them."""

  recorded: dict[int, dict[str, float]]
  best_metric: str

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
    infos = [dataclasses.replace(info, metrics=self.recorded.get(info.step, info.metrics)) for info in checkpoints]
    best = checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics[self.best_metric], n=1,
                                     keep_checkpoints_without_metrics=False)
    return best.should_preserve(infos, context=context)


class Checkpointer:
  """Saves and restores (train state, data iterator, config) with an orbax CheckpointManager.

  Args:
    damaged: what `restore` does with a damaged checkpoint newer than the one it restores: 'move' it to
      <workdir>/checkpoints_damaged/<step> and go on, or 'stop' (CheckpointDamagedError; nothing is moved).
  """

  def __init__(self, workdir: str | epath.Path, *, keep: int = 3, best_metric: str = 'miou', create: bool = True,
               damaged: str = 'move'):
    self.directory = checkpoint_dir(workdir)
    self._metrics_path = self.directory.parent / METRICS_FILE
    self._damaged_policy = damaged
    if not create and not self.directory.exists():
      raise FileNotFoundError(f'no checkpoints in {self.directory}: train first '
                              f'(python -m ctxseg_jax.main --config ... --workdir {workdir})')
    self._recorded = self._read_recorded()
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep), _BestRecorded(self._recorded, best_metric)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=create,
                                           enable_async_checkpointing=True)
    handlers = {STATE: ocp.PyTreeCheckpointHandler(), DATA_ITER: grain.checkpoint.CheckpointHandler(),
                CONFIG: ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._saving: int | None = None  # the step of the save in flight
    self._failed = False
    _quiet_write_failures()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None,
           config: ml_collections.ConfigDict, metrics: dict[str, float] | None = None,
           data_stream: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
    """Starts an asynchronous save of `step` (returns once device buffers are copied). `metrics`, or those
    recorded later with `record_metrics`, rank it for the best-checkpoint retention.

    `data_stream` (what the data iterator's position means beyond the config, e.g. the split's size) is saved
    in the 'config' item under DATA_STREAM_KEY; `extra` entries are added to that item as they are.
    """
    saved_config = json.loads(config.to_json_best_effort())
    if data_stream is not None:
      saved_config[DATA_STREAM_KEY] = data_stream
    saved_config.update(extra or {})
    items = {STATE: ocp.args.PyTreeSave(state), CONFIG: ocp.args.JsonSave(saved_config)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    self._recorded.pop(step, None)  # a step saved again (after a fallback) is ranked by its new metrics only
    if metrics is not None:
      self.record_metrics(step, metrics)
    self.wait()  # a failure of the previous save stops the run here, naming that save
    self._saving = step
    with self._write_errors():
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def record_metrics(self, step: int, metrics: dict[str, float]) -> None:
    """Records the eval metrics of saved step `step` for the best-checkpoint retention, which the next save
    applies (a step is saved before it is evaluated, so its metrics come after its save)."""
    self._recorded[step] = {k: float(v) for k, v in metrics.items()}
    self._write_recorded()

  def restore(self, abstract_state: Any, data_iter: grain.DatasetIterator | None = None,
              step: int | None = None, check_config: Callable[[int, dict], None] | None = None) -> tuple[int, Any]:
    """Restores `step` into the shapes and shardings of `abstract_state`; by default the newest step that
    restores, after dealing with the damaged ones newer than it as the `damaged` policy says.

    Restores the data iterator in place when given, from the same step. `check_config(step, saved_config)` may
    refuse a step's saved config (its error propagates). Returns (step, state).
    """
    def attempt(candidate: int) -> Any:
      saved = self._attempt(candidate, CONFIG, lambda: self.saved_config(candidate))
      if check_config is not None:
        check_config(candidate, saved)
      self._check_fits(candidate, {'params': abstract_state.params, 'batch_stats': abstract_state.batch_stats})
      if data_iter is not None:
        self._attempt(candidate, DATA_ITER, lambda: self._manager.restore(candidate, args=ocp.args.Composite(**{
            DATA_ITER: grain.checkpoint.CheckpointRestore(data_iter)})))
      return self._attempt(candidate, STATE, lambda: self._manager.restore(candidate, args=ocp.args.Composite(**{
          STATE: _pytree_restore(abstract_state)}))[STATE])

    if step is not None:
      return self._existing_step(step), self._restore_or_explain(step, attempt)
    self._existing_step(None)
    damaged: list[_Damaged] = []
    for candidate in sorted(self.all_steps(), reverse=True):
      try:
        state = self._agreed(candidate, attempt)
      except _Damaged as e:
        reporting.console(f'Checkpoint step {e.step} in {self.directory} is damaged: {e.reason}')
        damaged.append(e)
        continue
      if damaged and self._damaged_policy != 'move':
        raise CheckpointDamagedError(
            f'{_describe(damaged, self.directory)}; step {candidate} restores. Left in place as '
            f'config.train.damaged_checkpoints={self._damaged_policy!r}: move the damaged step(s) out of '
            f'{self.directory}, or resume with --config.train.damaged_checkpoints=move')
      if damaged:
        self._move_aside([e.step for e in damaged])
        reporting.console(f'Falling back to step {candidate}.')
      for later in [s for s in self._recorded if s > candidate]:
        self._recorded.pop(later)
      self._write_recorded()
      return candidate, state
    raise CheckpointDamagedError(f'no checkpoint in {self.directory} restores: {_describe(damaged)}. Nothing was '
                                 'moved; move them aside to train from scratch, or use another --workdir')

  def restore_variables(self, abstract_variables: dict[str, Any], step: int | None = None) -> tuple[int, dict]:
    """Restores only {'params', 'batch_stats'} of `step` (default: latest) into `abstract_variables`' shapes and
    shardings: what evaluation and prediction need, whatever optimizer state the checkpoint holds.

    CheckpointDamagedError when they cannot be restored, naming the steps whose variables do restore."""
    step = self._existing_step(step)

    def attempt(candidate: int) -> dict:
      self._check_fits(candidate, abstract_variables)
      restored = self._attempt(candidate, STATE, lambda: self._manager.restore(candidate, args=ocp.args.Composite(
          **{STATE: _pytree_restore(abstract_variables, partial=True)}))[STATE])
      return {key: restored[key] for key in abstract_variables}

    return step, self._restore_or_explain(step, attempt)

  def saved_variables(self, step: int | None = None) -> tuple[int, dict]:
    """(step, {'params', 'batch_stats'} as numpy arrays in the shapes they were saved with) of `step` (default:
    the latest), whatever model the config describes."""
    step = self._existing_step(step)
    saved = self._attempt(step, STATE, lambda: self._manager.item_metadata(step)[STATE])
    wanted = {key: saved[key] for key in ('params', 'batch_stats') if key in saved}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = self._attempt(step, STATE, lambda: self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(wanted, restore_args=restore_args, partial_restore=True)}))[STATE])
    return step, {key: restored[key] for key in wanted}

  def saved_config(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

  def _restore_or_explain(self, step: int, attempt: Callable[[int], Any]) -> Any:
    """attempt(step), or CheckpointDamagedError naming why it failed and the other steps that restore."""
    try:
      return self._agreed(step, attempt)
    except _Damaged as e:
      good = []
      for other in sorted(set(self.all_steps()) - {step}, reverse=True):
        try:
          self._agreed(other, attempt)
          good.append(other)
        except (_Damaged, CheckpointMismatchError):
          pass
      raise CheckpointDamagedError(
          f'{_describe([e], self.directory)}. Steps that restore: {good or "none"}'
          + (f' (choose one with --step {good[0]})' if good else '')) from None

  def _attempt(self, step: int, item: str, fn: Callable[[], Any]) -> Any:
    """fn(), with any failure to read item `item` of `step` turned into _Damaged (orbax, tensorstore and grain
    raise anything from KeyError to JSONDecodeError for a missing or truncated file)."""
    _quiet_abandoned_reads()
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(step, f'its {item!r} item cannot be read ({_one_line(e)})') from None

  def _agreed(self, step: int, attempt: Callable[[int], Any]) -> Any:
    """attempt(step) on every process; _Damaged on all of them when it failed on any (each process reads its
    own data iterator state, and all must fall back to the same step)."""
    damaged, result = None, None
    try:
      result = attempt(step)
    except _Damaged as e:
      damaged = e
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      failed = multihost_utils.process_allgather(np.array(damaged is not None))
      if damaged is None and np.any(failed):
        damaged = _Damaged(step, f'it cannot be read on process(es) {np.flatnonzero(failed).tolist()}')
    if damaged is not None:
      raise damaged
    return result

  def _move_aside(self, steps: list[int]) -> None:
    """Moves damaged `steps` to <workdir>/checkpoints_damaged/<step>[.<n>] (process 0) and reloads the step list."""
    target_dir = self.directory.parent / DAMAGED_DIR
    if jax.process_index() == 0:
      target_dir.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target, n = target_dir / str(step), 0
        while target.exists():
          n += 1
          target = target_dir / f'{step}.{n}'
        (self.directory / str(step)).rename(target)
        reporting.console(f'Moved the damaged checkpoint step {step} to {target}')
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('ctxseg_jax:moved_damaged_checkpoints')
    self._manager.reload()

  def _read_recorded(self) -> dict[int, dict[str, float]]:
    if not self._metrics_path.exists():
      return {}
    try:
      return {int(step): metrics for step, metrics in json.loads(self._metrics_path.read_text()).items()}
    except (ValueError, AttributeError) as e:
      reporting.console(f'Warning: ignoring unreadable {self._metrics_path} ({_one_line(e)}); checkpoints saved by '
                        'this run are ranked by the mIoU recorded from now on')
      return {}

  def _write_recorded(self) -> None:
    if jax.process_index() == 0:
      storage.write_atomic(self._metrics_path,
                           json.dumps({str(step): self._recorded[step] for step in sorted(self._recorded)}))

  def _existing_step(self, step: int | None) -> int:
    """`step`, or the latest when None; FileNotFoundError listing the available steps when there is none."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint{"" if step is None else f" for step {step}"} in {self.directory}; '
                              f'available steps: {self.all_steps() or "none"}')
    return step

  def _check_fits(self, step: int, abstract_variables: dict[str, Any]) -> None:
    """Raises CheckpointMismatchError naming every parameter or statistic whose path or shape differs."""
    saved = self._attempt(step, STATE, lambda: self._manager.item_metadata(step)[STATE])
    saved_shapes = self._attempt(step, STATE, lambda: _shapes_by_path(
        {'params': saved['params'], 'batch_stats': saved['batch_stats']}))
    wanted_shapes = _shapes_by_path(abstract_variables)
    problems = []
    for path in sorted(wanted_shapes.keys() - saved_shapes.keys()):
      problems.append(f'missing in checkpoint: {path} {wanted_shapes[path]}')
    for path in sorted(saved_shapes.keys() - wanted_shapes.keys()):
      problems.append(f'not in the model: {path} {saved_shapes[path]}')
    for path in sorted(wanted_shapes.keys() & saved_shapes.keys()):
      if saved_shapes[path] != wanted_shapes[path]:
        problems.append(f'shape mismatch: {path} checkpoint {saved_shapes[path]} vs model {wanted_shapes[path]}')
    if problems:
      shown = problems[:20] + ([f'... and {len(problems) - 20} more'] if len(problems) > 20 else [])
      raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} does not fit the configured model '
          f'({len(problems)} problems):\n  ' + '\n  '.join(shown) +
          '\nRestore with the config the checkpoint was trained with (saved beside it as the "config" item).')

  def reached_preemption(self, step: int) -> bool:
    """True on every process once a preemption notice reached the multi-host coordination service."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk; storage.WriteError when one failed for lack of space
    or permission."""
    if self._failed:
      return
    with self._write_errors():
      self._manager.wait_until_finished()
    self._saving = None

  def close(self) -> None:
    if self._failed:
      return  # the manager would wait for (and log) the failed save again
    with self._write_errors():
      self._manager.close()

  def _write_errors(self):
    checkpointer = self

    class _Translate:
      def __enter__(self):
        return self

      def __exit__(self, kind, error, traceback):
        os_error = storage.write_os_error(error)
        if os_error is None:
          return False
        checkpointer._failed = True
        step = checkpointer._saving
        path = os_error.filename or checkpointer.directory
        last = [s for s in checkpointer.all_steps() if s != step]
        raise storage.WriteError(
            f'cannot save checkpoint{"" if step is None else f" step {step}"}: {storage.describe(os_error)} '
            f'({path}); the last good checkpoint is {f"step {max(last)}" if last else "none"} in '
            f'{checkpointer.directory}') from None

    return _Translate()


class _WriteFailureFilter(logging.Filter):
  """Drops orbax's logged tracebacks of a save that failed for lack of space or permission: the run reports it
  as one line (storage.WriteError)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and storage.write_os_error(record.exc_info[1]) is not None)


def _quiet_write_failures() -> None:
  logger = logging.getLogger('absl')
  if not any(isinstance(f, _WriteFailureFilter) for f in logger.filters):
    logger.addFilter(_WriteFailureFilter())


def _quiet_abandoned_reads() -> None:
  """Drops the tracebacks of reads that complete after their restore failed: orbax closes its event loop at the
  first array it cannot read, and tensorstore then posts the other reads' results to the closed loop from its own
  threads (RuntimeError 'Event loop is closed', reported through sys.unraisablehook). The restore's own error is
  reported as one line."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_abandoned_reads', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      previous(unraisable)
  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook


def _pytree_restore(abstract: Any, *, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Restore arguments placing each array with the shape, dtype and sharding of `abstract`'s leaf; with
  `partial`, only the parts of the saved tree that `abstract` names are read."""
  return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=partial)


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/backbone/stem/...': shape} for every array leaf (arrays or their metadata)."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'): tuple(leaf.shape) for path, leaf in flat}


def _one_line(error: BaseException) -> str:
  """'Type: first line of the message', at most 300 characters."""
  message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  first = (message.strip().splitlines() or [''])[0].split(' See full TensorStore details')[0]  # then a dump
  text = f'{type(error).__name__}: {first}'
  return text if len(text) <= 300 else text[:297] + '...'


def _describe(damaged: list[_Damaged], directory: epath.Path | None = None) -> str:
  where = f' in {directory}' if directory is not None else ''
  return '; '.join(f'checkpoint step {e.step}{where} is damaged: {e.reason}' for e in damaged)
