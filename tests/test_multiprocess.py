"""The multi-host path, run for real: several trainer processes on this machine joined by jax.distributed (CPU
devices, gloo collectives), against one process with as many devices.

2 processes x 4 devices train exactly as 1 process x 8 (same per-step losses, same evaluation, same final
parameters); the checkpoint is written by both and restored by both; SIGTERM to one process stops every process at
the same saved step with exit code 0; SIGKILL of one process (a host of a slice dies) makes the other exit 1 with
one line that says so, leaves the last checkpoint whole, and the resumed run ends where the uninterrupted one does.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ctxseg_jax import experiment, reporting
from ctxseg_jax.checkpoints import Checkpointer
from tests.tiny_config import get_config

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
ARGS = [f'--config.train.steps={STEPS}', '--config.train.log_every=1', '--config.train.checkpoint_every=2',
        f'--config.train.eval_every={STEPS}']
TIMEOUT_S = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['JAX_COMPILATION_CACHE_DIR'] = jax.config.jax_compilation_cache_dir or ''
  env['PYTHONPATH'] = ROOT
  return env


def _trainer(workdir, *extra) -> list[str]:
  return [sys.executable, '-m', 'ctxseg_jax.main', '--config', 'tests/tiny_config.py', '--workdir', str(workdir),
          *ARGS, *extra]


def _start(workdir, processes: int, devices: int, *extra) -> list[subprocess.Popen]:
  """`processes` trainers of the tiny config with `devices` CPU devices each, as `launch/local.sh` starts them (one
  Popen each, to signal one of them)."""
  command = _trainer(workdir, *extra)
  if processes > 1:
    command += [f'--coordinator_address=localhost:{_free_port()}', f'--num_processes={processes}']
  return [subprocess.Popen(command + ([f'--process_id={i}'] if processes > 1 else []), cwd=ROOT, env=_env(devices),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(processes)]


def _finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
  results = []
  for process in processes:
    try:
      out, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      for other in processes:
        other.kill()
      raise
    results.append((process.returncode, out))
  return results


def _run(workdir, processes: int, devices: int) -> list[str]:
  results = _finish(_start(workdir, processes, devices))
  for code, out in results:
    assert code == 0, out[-3000:]
  return [out for _, out in results]


def _wait_for_checkpoint(workdir, step: int, processes: list[subprocess.Popen]) -> None:
  path = os.path.join(workdir, 'checkpoints', str(step))
  deadline = time.time() + TIMEOUT_S
  while not os.path.isdir(path):
    if time.time() > deadline or any(p.poll() is not None for p in processes):
      for process in processes:
        process.kill()
      outputs = [process.communicate()[0][-2000:] for process in processes]
      raise AssertionError(f'no checkpoint of step {step} came: {outputs}')
    time.sleep(0.02)


def _train_losses(workdir) -> dict[int, float]:
  return {r['step']: r['loss'] for r in reporting.read_metrics(workdir) if r['split'] == 'train'}


def _eval_metrics(workdir) -> dict[str, float]:
  records = [r for r in reporting.read_metrics(workdir) if r['split'] == 'eval']
  return {k: v for k, v in records[-1].items() if k not in ('step', 'split') and not k.endswith('_s')}


def _final_params(workdir) -> tuple[int, list[np.ndarray]]:
  exp = experiment.build(get_config())
  checkpointer = Checkpointer(workdir, create=False)
  step, state = checkpointer.restore(exp.abstract_state())
  checkpointer.close()
  return step, [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope='module')
def single_process(tmp_path_factory):
  """1 process x 8 devices, uninterrupted: the reference run."""
  workdir = tmp_path_factory.mktemp('one_by_eight')
  _run(workdir, 1, 8)
  return workdir


def _assert_same_run(workdir, reference) -> None:
  losses, expected = _train_losses(workdir), _train_losses(reference)
  assert sorted(losses) == sorted(expected) == list(range(1, STEPS + 1))
  for step in expected:
    np.testing.assert_allclose(losses[step], expected[step], rtol=1e-6, err_msg=f'loss of step {step}')
  assert _eval_metrics(workdir) == pytest.approx(_eval_metrics(reference), rel=1e-6)
  step, params = _final_params(workdir)
  expected_step, expected_params = _final_params(reference)
  assert step == expected_step == STEPS
  for got, want in zip(params, expected_params):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_two_processes_of_four_devices_train_as_one_of_eight(single_process, tmp_path):
  result = subprocess.run(['launch/local.sh', '--devices_per_process', '4', '2', '--', *_trainer(tmp_path)], cwd=ROOT,
                          env=_env(1), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode == 0, result.stdout[-3000:]
  assert '[p0] tiny: synthetic_context (64 train images, 8 classes), 201,756 parameters, 8 device(s) on 2 ' \
         'process(es), global batch 8' in result.stdout
  _assert_same_run(tmp_path, single_process)


def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resumes(single_process, tmp_path):
  processes = _start(tmp_path, 2, 4)
  _wait_for_checkpoint(tmp_path, 2, processes)
  processes[1].send_signal(signal.SIGTERM)
  results = _finish(processes)
  saved = max(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  assert 2 <= saved < STEPS, 'the run ended before the signal took effect'
  for code, out in results:
    assert code == 0, out[-3000:]
  assert f'Preempted (SIGTERM): saved step {saved}' in results[0][1], results[0][1][-3000:]
  _run(tmp_path, 2, 4)  # the same command resumes
  _assert_same_run(tmp_path, single_process)


def test_sigkill_of_one_process_leaves_the_last_checkpoint_whole(single_process, tmp_path):
  processes = _start(tmp_path, 2, 4)
  _wait_for_checkpoint(tmp_path, 4, processes)
  processes[1].kill()
  (code, out), _ = _finish(processes)  # process 0 fails at its next exchange with the dead one
  # Either the lost connection reaches the trainer as an error (exit 1 with one line), or the runtime aborts the
  # process first (SIGABRT; seen once in a loaded CI run, with the main thread waiting for a step's results).
  reported = code == 1 and 'Error: another process of this 2-process job stopped' in out
  assert reported or code == -signal.SIGABRT, out[-3000:]
  _run(tmp_path, 2, 4)
  _assert_same_run(tmp_path, single_process)
