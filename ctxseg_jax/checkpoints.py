"""Orbax checkpoints of the train state, the data iterator and the config, under <workdir>/checkpoints.

Each checkpoint step holds three items: 'state' (step, params, batch_stats, opt_state), 'data_iter' (this
process's grain iterator position) and 'config' (the run's config as JSON). Saves are asynchronous and atomic
(orbax writes to a temporary directory and renames it). The last `keep` checkpoints are kept, plus the one with
the best eval mIoU.
"""
from __future__ import annotations

import json
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

STATE, DATA_ITER, CONFIG = 'state', 'data_iter', 'config'
DATA_STREAM_KEY = '_data_stream'  # in the saved config: see Checkpointer.save


class CheckpointMismatchError(ValueError):
  """A checkpoint whose parameters do not fit the model being restored into; names every mismatch."""


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
  """<workdir>/checkpoints, absolute (orbax requires it; a relative path is taken from the current directory)."""
  path = epath.Path(workdir)
  if '://' not in str(workdir):
    path = path.absolute()
  return path / 'checkpoints'


class Checkpointer:
  """Saves and restores (train state, data iterator, config) with an orbax CheckpointManager."""

  def __init__(self, workdir: str | epath.Path, *, keep: int = 3, best_metric: str = 'miou', create: bool = True):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics[best_metric], n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    self.directory = checkpoint_dir(workdir)
    if not create and not self.directory.exists():
      raise FileNotFoundError(f'no checkpoints in {self.directory}: train first '
                              f'(python -m ctxseg_jax.main --config ... --workdir {workdir})')
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=create,
                                           enable_async_checkpointing=True)
    handlers = {STATE: ocp.PyTreeCheckpointHandler(), DATA_ITER: grain.checkpoint.CheckpointHandler(),
                CONFIG: ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None,
           config: ml_collections.ConfigDict, metrics: dict[str, float] | None = None,
           data_stream: dict[str, Any] | None = None) -> None:
    """Starts an asynchronous save of `step` (returns once device buffers are copied).

    `data_stream` (what the data iterator's position means beyond the config, e.g. the split's size) is saved
    in the 'config' item under DATA_STREAM_KEY.
    """
    saved_config = json.loads(config.to_json_best_effort())
    if data_stream is not None:
      saved_config[DATA_STREAM_KEY] = data_stream
    items = {STATE: ocp.args.PyTreeSave(state), CONFIG: ocp.args.JsonSave(saved_config)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore(self, abstract_state: Any, data_iter: grain.DatasetIterator | None = None,
              step: int | None = None) -> tuple[int, Any]:
    """Restores `step` (default: latest) into the shapes and shardings of `abstract_state`.

    Restores the data iterator in place when given. Returns (step, state).
    """
    step = self._existing_step(step)
    self._check_fits(step, {'params': abstract_state.params, 'batch_stats': abstract_state.batch_stats})
    items = {STATE: _pytree_restore(abstract_state)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return step, restored[STATE]

  def restore_variables(self, abstract_variables: dict[str, Any], step: int | None = None) -> tuple[int, dict]:
    """Restores only {'params', 'batch_stats'} of `step` (default: latest) into `abstract_variables`' shapes and
    shardings: what evaluation and prediction need, whatever optimizer state the checkpoint holds."""
    step = self._existing_step(step)
    self._check_fits(step, abstract_variables)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: _pytree_restore(abstract_variables, partial=True)}))
    return step, {key: restored[STATE][key] for key in abstract_variables}

  def saved_config(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

  def _existing_step(self, step: int | None) -> int:
    """`step`, or the latest when None; FileNotFoundError listing the available steps when there is none."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint{"" if step is None else f" for step {step}"} in {self.directory}; '
                              f'available steps: {self.all_steps() or "none"}')
    return step

  def _check_fits(self, step: int, abstract_variables: dict[str, Any]) -> None:
    """Raises CheckpointMismatchError naming every parameter or statistic whose path or shape differs."""
    saved = self._manager.item_metadata(step)[STATE]
    saved_shapes = _shapes_by_path({'params': saved['params'], 'batch_stats': saved['batch_stats']})
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
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _pytree_restore(abstract: Any, *, partial: bool = False) -> ocp.args.PyTreeRestore:
  """Restore arguments placing each array with the shape, dtype and sharding of `abstract`'s leaf; with
  `partial`, only the parts of the saved tree that `abstract` names are read."""
  return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=partial)


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/backbone/stem/...': shape} for every array leaf (arrays or their metadata)."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'): tuple(leaf.shape) for path, leaf in flat}
