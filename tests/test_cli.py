"""The command line as a user runs it: separate processes, SIGKILL and SIGTERM mid-run (summary: test_summary.py)."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ctxseg_jax import experiment, reporting
from ctxseg_jax.checkpoints import Checkpointer
from tests.tiny_config import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ['--config.train.steps=40', '--config.train.checkpoint_every=10', '--config.train.eval_every=20',
         '--config.train.log_every=5']


def _env():
  env = dict(os.environ)
  env['XLA_FLAGS'] = ''  # one CPU device, as a user's laptop
  env['JAX_COMPILATION_CACHE_DIR'] = jax.config.jax_compilation_cache_dir or ''
  env['PYTHONPATH'] = ROOT
  return env


def _command(workdir, *extra):
  return [sys.executable, '-m', 'ctxseg_jax.main', '--config', 'tests/tiny_config.py', '--workdir', str(workdir),
          *STEPS, *extra]


def _run(workdir, *extra):
  result = subprocess.run(_command(workdir, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _interrupt_after_first_checkpoint(workdir, sig):
  process = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  first = os.path.join(workdir, 'checkpoints', '10')
  deadline = time.time() + 300
  while not os.path.isdir(first) and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(sig)
  out, err = process.communicate(timeout=300)
  return process.returncode, out, err


def _final_params(workdir):
  exp = experiment.build(get_config())
  checkpointer = Checkpointer(workdir, create=False)
  step, state = checkpointer.restore(exp.abstract_state())
  checkpointer.close()
  return step, [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _last(workdir, split):
  return [r for r in reporting.read_metrics(workdir) if r['split'] == split][-1]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('cli_uninterrupted')
  _run(workdir)
  return workdir


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM], ids=['SIGKILL', 'SIGTERM'])
def test_interrupted_cli_run_resumes_to_the_same_result(uninterrupted, tmp_path, sig):
  returncode, out, err = _interrupt_after_first_checkpoint(tmp_path, sig)
  if sig == signal.SIGKILL:
    assert returncode == -signal.SIGKILL, 'the run finished before it could be killed'
  else:
    assert returncode == 0, err[-3000:]
    assert 'Preempted (SIGTERM): saved step' in out
    saved = Checkpointer(tmp_path, create=False).latest_step()
    assert 10 <= saved < 40
  resumed = _run(tmp_path)
  assert 'Resumed from step' in resumed.stdout
  step_a, params_a = _final_params(uninterrupted)
  step_b, params_b = _final_params(tmp_path)
  assert step_a == step_b == 40
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)
  assert _last(tmp_path, 'eval')['miou'] == _last(uninterrupted, 'eval')['miou']
  assert _last(tmp_path, 'train')['loss'] == _last(uninterrupted, 'train')['loss']

