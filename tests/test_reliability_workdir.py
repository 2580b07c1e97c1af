"""A workdir in use, a crashed run's metrics.jsonl, and workdirs that cannot be written: one trainer per workdir
(trainer.lock), metrics.jsonl tolerant of a truncated line and rewritten atomically, a failed save or an unwritable
workdir reported as one line."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from etils import epath

from ctxseg_jax import reporting, storage
from ctxseg_jax.checkpoints import Checkpointer
from tests.test_cli import ROOT, _env

TINY = [sys.executable, '-m', 'ctxseg_jax.main', '--config', 'tests/tiny_config.py']


def _cli(*args, prefix=()):
  return subprocess.run([*(prefix or TINY), *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=300)


def _write_lock(workdir, **fields):
  info = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time() - 3600,
          'heartbeat': time.time(), 'token': 'other', **fields}
  (workdir / storage.LOCK_FILE).write_text(json.dumps(info))
  return info


def _dead_pid():
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.strip()]


def test_second_trainer_is_refused_with_one_line_naming_the_first(tmp_path):
  info = _write_lock(tmp_path)
  result = _cli('--workdir', str(tmp_path))
  assert result.returncode == 2, result.stderr[-3000:]
  lines = _error_lines(result.stderr)
  assert len(lines) == 1, result.stderr
  assert f'host {info["host"]}, pid {os.getpid()}, since ' in lines[0] and '--force_unlock' in lines[0]
  assert json.loads((tmp_path / storage.LOCK_FILE).read_text())['token'] == 'other'  # untouched
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('stale', ['dead_pid', 'old_heartbeat'])
def test_stale_lock_is_taken_over_with_a_message(tmp_path, capsys, stale):
  if stale == 'dead_pid':
    _write_lock(tmp_path, pid=_dead_pid())
  else:  # a live-looking process on another host, silent for an hour
    _write_lock(tmp_path, host='other-host', heartbeat=time.time() - 3600)
  with storage.TrainerLock(tmp_path, heartbeat_s=0.05) as lock:
    out = capsys.readouterr().out
    assert 'Taking over the lock of a trainer that is gone' in out
    assert ('is not running' if stale == 'dead_pid' else 'no heartbeat for 60 min') in out
    held = json.loads(lock.path.read_text())
    assert held['pid'] == os.getpid() and held['token'] != 'other'
    time.sleep(0.3)
    assert json.loads(lock.path.read_text())['heartbeat'] > held['heartbeat']  # refreshed while held
  assert not (tmp_path / storage.LOCK_FILE).exists()  # released


def test_live_lock_refused_in_process_and_taken_with_force(tmp_path):
  _write_lock(tmp_path)
  with pytest.raises(storage.WorkdirLockedError, match='in use by another trainer'):
    storage.TrainerLock(tmp_path).acquire()
  with storage.TrainerLock(tmp_path, force=True):
    assert json.loads((tmp_path / storage.LOCK_FILE).read_text())['token'] != 'other'
  assert not (tmp_path / storage.LOCK_FILE).exists()


def _records(*steps):
  return ''.join(json.dumps({'step': s, 'split': 'train', 'loss': float(s)}) + '\n' for s in steps)


def test_truncated_last_line_is_tolerated_by_reading_resuming_and_appending(tmp_path, caplog):
  path = tmp_path / reporting.METRICS_FILE
  path.write_text(_records(1, 2, 3) + '{"step": 4, "spl')  # killed mid-write
  assert [r['step'] for r in reporting.read_metrics(tmp_path)] == [1, 2, 3]
  assert 'truncated last line' in caplog.text
  writer = reporting.MetricWriter(tmp_path)  # eval mode appends without trimming
  writer.write(3, 'eval', {'miou': 5.0})
  writer.close()
  assert [(r['step'], r['split']) for r in reporting.read_metrics(tmp_path)][-1] == (3, 'eval')
  path.write_text(_records(1, 2, 3) + '{"step": 4, "spl')
  writer = reporting.MetricWriter(tmp_path, resume_step=2)
  writer.write(3, 'train', {'loss': 30.0})
  writer.close()
  assert path.read_text() == _records(1, 2) + json.dumps({'step': 3, 'split': 'train', 'loss': 30.0}) + '\n'


def test_resume_trim_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / reporting.METRICS_FILE
  path.write_text(_records(1, 2, 3, 4))
  cls = type(epath.Path(tmp_path))

  def half_then_full(self, data, *args, **kwargs):  # the disk fills half way through the write
    with open(self, 'wb' if isinstance(data, bytes) else 'w') as f:
      f.write(data[:len(data) // 2])
    raise OSError(28, 'No space left on device', str(self))

  monkeypatch.setattr(cls, 'write_text', half_then_full)
  monkeypatch.setattr(cls, 'write_bytes', half_then_full)
  with pytest.raises(OSError):
    reporting.MetricWriter(tmp_path, resume_step=2)
  assert path.read_text() == _records(1, 2, 3, 4)
  assert sorted(p.name for p in tmp_path.iterdir()) == [reporting.METRICS_FILE]  # no temporary left


def test_fresh_start_keeps_the_records_of_an_earlier_run(tmp_path, capsys):
  (tmp_path / reporting.METRICS_FILE).write_text(_records(1, 2, 3))
  writer = reporting.MetricWriter(tmp_path, fresh_start=True)
  writer.write(1, 'train', {'loss': 10.0})
  writer.close()
  assert [(r['step'], r['loss']) for r in reporting.read_metrics(tmp_path)] == [(1, 10.0)]
  kept = [p for p in tmp_path.glob('metrics.*.jsonl')]
  assert len(kept) == 1 and kept[0].read_text() == _records(1, 2, 3)
  assert f'kept as {kept[0]}' in capsys.readouterr().out


_NO_SPACE_AT_STEP_2 = '''
import errno, runpy, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
original = handler.JsonCheckpointHandler._save_fn
async def save(self, item, directory):
  if '/checkpoints/2.' in str(directory):
    raise OSError(errno.ENOSPC, 'No space left on device', str(directory / 'metadata'))
  return await original(self, item, directory)
handler.JsonCheckpointHandler._save_fn = save
sys.argv = ['ctxseg_jax.main', *sys.argv[1:]]
runpy.run_module('ctxseg_jax.main', run_name='__main__')
'''


def test_no_space_at_save_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
  """Also: --force_unlock takes a live-looking lock, releases it on the failed run's exit, and a fresh start keeps
  the metrics.jsonl of an earlier run that never saved."""
  (tmp_path / reporting.METRICS_FILE).write_text(_records(1, 2, 3, 4, 5))
  _write_lock(tmp_path)
  result = _cli('--config', 'tests/tiny_config.py', '--workdir', str(tmp_path), '--config.train.steps=4',
                '--config.train.checkpoint_every=1', '--config.train.log_every=1', '--force_unlock',
                prefix=[sys.executable, '-c', _NO_SPACE_AT_STEP_2])
  assert result.returncode == 1, result.stderr[-3000:]
  lines = _error_lines(result.stderr)
  assert len(lines) == 1, result.stderr[-3000:]
  assert 'cannot save checkpoint step 2: no space left on device' in lines[0]
  assert str(tmp_path / 'checkpoints') in lines[0] and 'last good checkpoint is step 1' in lines[0]
  assert 'forced by --force_unlock' in result.stdout
  assert 'kept as' in result.stdout and len(list(tmp_path.glob('metrics.*.jsonl'))) == 1
  assert not (tmp_path / storage.LOCK_FILE).exists()
  checkpointer = Checkpointer(tmp_path, create=False)
  assert checkpointer.latest_step() == 1
  checkpointer.close()
  from ctxseg_jax import experiment
  from tests.tiny_config import get_config
  exp = experiment.build(get_config())
  checkpointer = Checkpointer(tmp_path, create=False)
  step, _ = checkpointer.restore(exp.abstract_state())
  checkpointer.close()
  assert step == 1


@pytest.mark.parametrize('mode', ['train', 'summary'])
def test_workdir_that_is_a_file_is_refused_with_one_line(tmp_path, mode):
  workdir = tmp_path / 'run'
  workdir.write_text('not a folder')
  result = _cli('--workdir', str(workdir), '--mode', mode)
  assert result.returncode == 2, result.stderr[-3000:]
  assert _error_lines(result.stderr) == [f'Error: cannot write the workdir {workdir}: not a directory']
  inside = workdir / 'sub'  # a parent that is a file: unwritable even as root
  with pytest.raises(storage.WorkdirError, match=f'not a directory \\({workdir} is a file\\)'):
    storage.check_writable(inside)


@pytest.mark.skipif(os.geteuid() == 0, reason='root ignores directory permissions')
def test_read_only_workdir_is_refused(tmp_path):
  tmp_path.chmod(0o555)
  try:
    with pytest.raises(storage.WorkdirError, match='permission denied'):
      storage.check_writable(tmp_path / 'run')
  finally:
    tmp_path.chmod(0o755)
