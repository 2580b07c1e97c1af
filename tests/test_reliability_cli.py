"""The command line under a user's mistakes and a job scheduler's signals: SIGTERM and Ctrl-C to the whole process
group (grain worker processes included), resumes that would not be exact, and bad config files, each ending in
one clear line."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ctxseg_jax.checkpoints import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config', 'tests/tiny_config.py']


def _env():
  import jax
  env = dict(os.environ)
  env['XLA_FLAGS'] = ''  # one CPU device
  env['JAX_COMPILATION_CACHE_DIR'] = jax.config.jax_compilation_cache_dir or ''
  env['PYTHONPATH'] = ROOT
  return env


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'ctxseg_jax.main', *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _one_line_error(result, code=2):
  assert result.returncode == code, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('Error: '), result.stderr[-3000:]
  return lines[0]


def _signal_group_after_a_step(workdir, sig):
  """Starts a 400-step run with one grain worker in its own process group and signals the whole group once the
  run has logged step 2; returns (returncode, stdout, stderr)."""
  process = subprocess.Popen(
      [sys.executable, '-m', 'ctxseg_jax.main', *TINY, '--workdir', str(workdir), '--config.train.steps=400',
       '--config.train.log_every=2', '--config.train.checkpoint_every=1000', '--config.data.worker_count=1'],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  out = []
  try:
    for line in process.stdout:
      out.append(line)
      if line.startswith('step 2/'):
        os.killpg(process.pid, sig)
        break
    rest, err = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  return process.returncode, ''.join(out) + rest, err


@pytest.mark.parametrize('sig, said', [(signal.SIGTERM, 'Preempted (SIGTERM): saved step'),
                                       (signal.SIGINT, 'Interrupted (SIGINT): saved step')],
                         ids=['SIGTERM', 'SIGINT'])
def test_signal_to_the_process_group_with_workers_saves_and_resumes(tmp_path, sig, said):
  returncode, out, err = _signal_group_after_a_step(tmp_path, sig)
  assert returncode == 0, err[-3000:]
  assert said in out, out[-2000:]
  assert 'Traceback' not in err, err[-3000:]
  saved = Checkpointer(tmp_path, create=False).latest_step()
  assert saved is not None and saved >= 2
  resumed = _cli(*TINY, '--workdir', str(tmp_path), f'--config.train.steps={saved + 1}',
                 '--config.data.worker_count=1')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {saved}' in resumed.stdout


def _spawned_children(pid):
  """The pids of the processes `pid` started with multiprocessing's spawn (grain's data workers)."""
  children = []
  for entry in os.listdir('/proc'):
    try:
      with open(f'/proc/{entry}/stat') as f:
        parent = int(f.read().rsplit(')', 1)[1].split()[1])
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        spawned = b'spawn_main' in f.read()
    except (OSError, ValueError, IndexError):
      continue
    if parent == pid and spawned:
      children.append(int(entry))
  return children


def test_signal_to_the_process_group_while_data_workers_start_stops_cleanly(tmp_path):
  """SIGTERM to the group the moment the data workers exist, before they can ignore it (they are still importing
  modules): the workers die with it, and the trainer says it stopped, exit 0, no traceback."""
  process = subprocess.Popen(
      [sys.executable, '-m', 'ctxseg_jax.main', *TINY, '--workdir', str(tmp_path), '--config.train.steps=400',
       '--config.data.worker_count=2'],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    deadline = time.monotonic() + 120
    while not _spawned_children(process.pid) and process.poll() is None and time.monotonic() < deadline:
      time.sleep(0.01)
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  assert process.returncode == 0, err[-3000:]
  assert 'Traceback' not in err, err[-3000:]
  assert 'Preempted (SIGTERM)' in out, out[-2000:]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained')
  result = _cli(*TINY, '--workdir', str(workdir), '--config.train.steps=1', '--config.train.checkpoint_every=1')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.parametrize('override, named', [
    ('--config.seed=1', 'config.seed was 0, now 1'),
    ('--config.train.batch_size=4', 'config.train.batch_size was 8, now 4'),
    ('--config.data.synthetic.num_train=48', 'config.data.synthetic.num_train was 64, now 48'),
], ids=['seed', 'global_batch', 'dataset_size'])
def test_resume_that_would_change_the_data_stream_is_refused(trained, override, named):
  line = _one_line_error(_cli(*TINY, '--workdir', str(trained), '--config.train.steps=2', override))
  assert named in line and 'cannot resume' in line


def test_step_in_train_mode_is_refused(tmp_path):
  line = _one_line_error(_cli(*TINY, '--workdir', str(tmp_path), '--step=3'))
  assert '--step only applies to --mode eval or predict' in line


_BAD_CONFIGS = {
    'syntax': ('def get_config(:\n  pass\n', 'syntax error'),
    'import_error': ('import no_such_module_here\n\ndef get_config():\n  return None\n', 'no_such_module_here'),
    'raises': ('def get_config():\n  raise ValueError("no dataset chosen")\n', 'no dataset chosen'),
    'no_get_config': ('CONFIG = 1\n', 'has no get_config()'),
    'returns_none': ('def get_config():\n  pass\n', 'returned NoneType, not an ml_collections.ConfigDict'),
    'mistyped_key': ('from tests.tiny_config import get_config as tiny\n\ndef get_config():\n  c = tiny()\n'
                     '  c.train.stpes = 3\n  return c\n', "unknown config key 'stpes' (did you mean 'steps'?)"),
    'unknown_top_level_key': ('import ml_collections\nfrom tests.tiny_config import get_config as tiny\n\n'
                              'def get_config():\n  c = tiny()\n  with c.unlocked():\n    c.trian = 3\n  return c\n',
                              "unknown top-level config key(s) ['trian']"),
}


@pytest.mark.parametrize('case', list(_BAD_CONFIGS) + ['missing'])
def test_bad_config_file_is_one_line_naming_the_file_and_the_cause(tmp_path, case):
  path = tmp_path / f'{case}.py'
  text, cause = _BAD_CONFIGS.get(case, (None, 'does not exist'))
  if text is not None:
    path.write_text(textwrap.dedent(text))
  # An override beside the file: a mistake inside the file is still blamed on the file.
  line = _one_line_error(_cli('--config', str(path), '--mode=summary', '--workdir', str(tmp_path / 'w'),
                              '--config.train.steps=2'))
  assert f'config file {path}' in line and cause in line, line


def test_senseless_value_and_workdir_file_are_one_line(tmp_path):
  line = _one_line_error(_cli(*TINY, '--mode=summary', '--workdir', str(tmp_path), '--config.data.std=(1.0,0.0,1.0)'),
                         code=2)
  assert 'config.data.std' in line
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  line = _one_line_error(_cli(*TINY, '--mode=summary', '--workdir', str(a_file)))
  assert f'cannot write the workdir {a_file}: not a directory' in line
