"""Checkpoint reliability: a damaged newest checkpoint (train falls back exactly, eval names it and the good steps),
a failing evaluation that still leaves its step saved, and best-by-mIoU retention with metrics recorded after the
save."""
import glob
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from ctxseg_jax import experiment, reporting, train
from ctxseg_jax.checkpoints import DAMAGED_DIR, CheckpointDamagedError, Checkpointer
from ctxseg_jax.evaluate import Evaluator, evaluate
from tests.tiny_config import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _restore(workdir, step=None):
  exp = experiment.build(get_config(), jax.devices()[:1])
  checkpointer = Checkpointer(workdir, create=False)
  try:
    return checkpointer.restore(exp.abstract_state(), step=step)
  finally:
    checkpointer.close()


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _largest(pattern):
  return max(glob.glob(pattern), key=os.path.getsize)


def _remove_all(pattern):
  for path in glob.glob(pattern):
    os.remove(path)


# Each damages checkpoint step 6 (the newest; step 3 is intact) of a copy of an uninterrupted 6-step run. The state's
# data files are all deleted: which arrays any one of them holds depends on the order of orbax's asynchronous writes
# (one may hold only optimizer state, which evaluation does not read).
DAMAGE = {
    'state_file_deleted': lambda ckpt: _remove_all(f'{ckpt}/state/ocdbt.process_0/d/*'),
    'state_file_truncated': lambda ckpt: _truncate(_largest(f'{ckpt}/state/d/*')),
    'state_metadata_truncated': lambda ckpt: _truncate(f'{ckpt}/state/_METADATA'),
    'data_iter_deleted': lambda ckpt: shutil.rmtree(f'{ckpt}/data_iter'),
    'config_file_deleted': lambda ckpt: os.remove(f'{ckpt}/config/metadata'),
}
STATE_DAMAGE = ['state_file_deleted', 'state_file_truncated', 'state_metadata_truncated']


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  results = train.train(get_config(), workdir, devices=jax.devices()[:1])
  return workdir, results


def _damaged_copy(uninterrupted, tmp_path, damage):
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted[0], workdir)
  DAMAGE[damage](str(workdir / 'checkpoints' / '6'))
  return workdir


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_train_falls_back_to_the_newest_good_checkpoint_and_resumes_exactly(uninterrupted, tmp_path, damage,
                                                                             capsys):
  workdir = _damaged_copy(uninterrupted, tmp_path, damage)
  results = train.train(get_config(), workdir, devices=jax.devices()[:1])
  out = capsys.readouterr().out
  assert f'Checkpoint step 6 in {workdir / "checkpoints"} is damaged: its ' in out
  assert 'Falling back to step 3.' in out and 'Resumed from step 3' in out
  assert 'Traceback' not in out
  # Moved aside, not deleted; the run then saved a good step 6 in its place.
  assert (workdir / DAMAGED_DIR / '6').is_dir()
  assert Checkpointer(workdir).all_steps() == [3, 6]
  (step_a, state_a), (step_b, state_b) = _restore(uninterrupted[0]), _restore(workdir)
  assert step_a == step_b == 6
  for a, b in zip(_leaves(state_a), _leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  assert results['miou'] == uninterrupted[1]['miou']
  records = reporting.read_metrics(workdir)  # trimmed to step 3 on resume, then continued: no duplicates
  assert [(r['step'], r['split']) for r in records] == [(2, 'train'), (4, 'train'), (6, 'train'), (6, 'eval')]
  timeless = lambda rs: [{k: v for k, v in r.items() if k != 'images_per_s'} for r in rs]
  # Step 4's window holds steps 3-4 uninterrupted but only step 4 after the resume; step 6's window is the same.
  assert timeless(records)[-2:] == timeless(reporting.read_metrics(uninterrupted[0]))[-2:]


def test_stop_policy_leaves_the_damaged_checkpoint_in_place(uninterrupted, tmp_path):
  workdir = _damaged_copy(uninterrupted, tmp_path, 'state_file_deleted')
  config = get_config()
  config.train.damaged_checkpoints = 'stop'
  with pytest.raises(CheckpointDamagedError, match=r'checkpoint step 6 in .* is damaged: .*; step 3 restores'):
    train.train(config, workdir, devices=jax.devices()[:1])
  assert Checkpointer(workdir).all_steps() == [3, 6] and not (workdir / DAMAGED_DIR).exists()


@pytest.mark.parametrize('damage', STATE_DAMAGE)
def test_eval_names_the_damaged_step_and_the_good_ones(uninterrupted, tmp_path, damage):
  workdir = _damaged_copy(uninterrupted, tmp_path, damage)
  with pytest.raises(CheckpointDamagedError) as error:
    evaluate(get_config(), workdir)
  message = str(error.value)
  assert message.startswith(f'checkpoint step 6 in {workdir / "checkpoints"} is damaged: its \'state\' item')
  assert message.endswith('Steps that restore: [3] (choose one with --step 3)') and '\n' not in message
  assert evaluate(get_config(), workdir, step=3)['miou'] >= 0
  assert Checkpointer(workdir).all_steps() == [3, 6]  # evaluation moves nothing


def test_eval_of_a_checkpoint_without_its_data_iterator_still_runs(uninterrupted, tmp_path):
  """Evaluation reads only the parameters and statistics: intact here, so step 6 evaluates as before."""
  workdir = _damaged_copy(uninterrupted, tmp_path, 'data_iter_deleted')
  assert evaluate(get_config(), workdir) == uninterrupted[1]


def test_cli_eval_of_a_damaged_checkpoint_is_one_line(uninterrupted, tmp_path):
  workdir = _damaged_copy(uninterrupted, tmp_path, 'state_file_deleted')
  env = {**os.environ, 'XLA_FLAGS': '', 'PYTHONPATH': ROOT,
         'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir or ''}
  result = subprocess.run([sys.executable, '-m', 'ctxseg_jax.main', '--config', 'tests/tiny_config.py', '--workdir',
                           str(workdir), '--mode', 'eval'], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
  assert len(errors) == 1 and 'checkpoint step 6' in errors[0] and 'Steps that restore: [3]' in errors[0], \
      result.stderr[-3000:]


def test_failing_evaluation_still_leaves_its_step_saved(tmp_path, monkeypatch):
  config = get_config()
  config.train.eval_every = 3  # step 3 is both saved and evaluated

  def failing_run(self, variables):
    raise RuntimeError('evaluation failed')

  monkeypatch.setattr(Evaluator, 'run', failing_run)
  with pytest.raises(RuntimeError, match='evaluation failed'):
    train.train(config, tmp_path, devices=jax.devices()[:1])
  assert Checkpointer(tmp_path).all_steps() == [3]
  monkeypatch.undo()
  # ...and resuming from it ends where an uninterrupted run does.
  train.train(config, tmp_path, devices=jax.devices()[:1])
  reference = tmp_path / 'reference'
  train.train(config, reference, devices=jax.devices()[:1])
  for a, b in zip(_leaves(_restore(reference)[1]), _leaves(_restore(tmp_path)[1])):
    np.testing.assert_array_equal(a, b)


def test_best_checkpoint_retention_uses_the_miou_recorded_after_the_save(tmp_path, monkeypatch):
  """keep_checkpoints=1: the latest step is kept, plus the best by eval mIoU, recorded after each step's save,
  also across a restart."""
  mious = iter([10.0, 50.0, 20.0, 5.0, 45.0])
  monkeypatch.setattr(Evaluator, 'run', lambda self, variables: {'miou': next(mious)})
  monkeypatch.setattr(Evaluator, 'report', lambda self, step, results, writer: None)
  config = get_config()
  config.train.checkpoint_every = config.train.eval_every = 1
  config.train.keep_checkpoints = 1
  config.train.steps = 4
  train.train(config, tmp_path, devices=jax.devices()[:1])
  assert Checkpointer(tmp_path).all_steps() == [2, 4]
  config.train.steps = 5
  train.train(config, tmp_path, devices=jax.devices()[:1])  # resumes from 4 in a new checkpoint manager
  assert Checkpointer(tmp_path).all_steps() == [2, 5]
