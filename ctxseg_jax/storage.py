"""Writing to a workdir (local or gs://): checks before work, failed writes as one line, atomic rewrites, and the
trainer lock that keeps a second trainer out of a workdir in use.

The lock is <workdir>/trainer.lock, a JSON file {"host", "pid", "started", "heartbeat", "token"} written by
process 0 only. Locally it is created atomically (a complete temporary file hard-linked to the lock name, which
fails when the name exists); on object stores (gs://) there is no exclusive create, so two trainers started within
the same second may both take it (a small race, accepted). The trainer refreshes "heartbeat" every HEARTBEAT_S;
a lock is stale, and taken over with a message, when its heartbeat is older than STALE_S, or at once when it
names a dead process on this host. `--force_unlock` (or deleting the file) takes over a lock that is not stale.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid

import jax
from etils import epath

LOCK_FILE = 'trainer.lock'
HEARTBEAT_S = 60.0
STALE_S = 600.0

_CAUSES = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
           errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied', errno.EPERM: 'permission denied',
           errno.ENOTDIR: 'not a directory', errno.EISDIR: 'is a directory'}


class WorkdirError(Exception):
  """A workdir (or output folder) that cannot be used, found before any work: the command line exits 2."""


class WorkdirLockedError(WorkdirError):
  """Another trainer holds the workdir's lock."""


class WriteError(Exception):
  """A write that failed mid-run (no space left, read-only, permission denied): the command line exits 1."""


def write_os_error(exc: BaseException | None) -> OSError | None:
  """The OSError of a failed write (ENOSPC, EROFS, EACCES, ...) in `exc`, its causes, contexts or exception group
  members; None when there is none."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _CAUSES:
      return e
    todo += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]
  return None


def describe(error: OSError) -> str:
  """'no space left on device', 'read-only file system', ... for a write's OSError."""
  return _CAUSES.get(error.errno, error.strerror or str(error))


def write_atomic(path: epath.Path, data: str | bytes) -> None:
  """Writes `data` so that `path` holds either its old content or all of `data`: locally to a temporary file
  beside it, then renamed over it; on object stores directly (an object write is atomic)."""
  path = epath.Path(path)
  if '://' in str(path):
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return
  temporary = path.parent / f'.{path.name}.{socket.gethostname()}.{os.getpid()}.tmp'
  try:
    temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    temporary.replace(path)
  finally:
    if temporary.exists():
      temporary.unlink()


def check_writable(path: str | epath.PathLike, what: str = 'workdir') -> None:
  """Creates `path` if needed and writes and deletes a probe file in it (on process 0; every process learns the
  outcome); a WorkdirError naming the path and the cause (not a directory, read-only file system, permission
  denied, no space left) when that fails."""
  error = None
  if jax.process_index() == 0:
    try:
      _check_writable(epath.Path(path), what)
    except WorkdirError as e:
      error = e
  if not _agree(error is None):
    raise error or WorkdirError(f'process 0 cannot write the {what} {path}: see its message')


def _check_writable(path: epath.Path, what: str) -> None:
  remote = '://' in str(path)
  if not remote:
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
      existing = existing.parent
    if not existing.is_dir():
      where = '' if existing == path.absolute() else f' ({existing} is a file)'
      raise WorkdirError(f'cannot write the {what} {path}: not a directory{where}')
  try:
    if not remote:  # object stores have no folders (and gcsfs's mkdir would create a missing bucket)
      path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_test.{socket.gethostname()}.{os.getpid()}'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    if remote and isinstance(e, FileNotFoundError):
      scheme, rest = str(path).split('://', 1)
      bucket = f'{scheme}://{rest.split("/", 1)[0]}'
      raise WorkdirError(f'cannot write the {what} {path}: the bucket {bucket} does not exist; check the name, or '
                         f'create it (gcloud storage buckets create {bucket})') from None
    raise WorkdirError(f'cannot write the {what} {path}: {describe(e)}') from None


def _agree(ok: bool) -> bool:
  """Process 0's `ok` on every process (single process: `ok`)."""
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(ok)))


def _stamp(seconds: float) -> str:
  return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(seconds))


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


class TrainerLock:
  """<workdir>/trainer.lock held while a trainer runs (see the module docstring). A context manager; only process
  0 touches the file, every process learns whether it got it."""

  def __init__(self, workdir: str | epath.PathLike, *, force: bool = False, heartbeat_s: float = HEARTBEAT_S,
               stale_s: float = STALE_S):
    self.path = epath.Path(workdir) / LOCK_FILE
    self._remote = '://' in str(workdir)
    self._force, self._heartbeat_s, self._stale_s = force, heartbeat_s, stale_s
    self._info = None
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()

  def acquire(self) -> None:
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirError as e:
        error = e
    if not _agree(error is None):
      raise error or WorkdirLockedError(f'process 0 could not lock the workdir ({self.path}): see its message')

  def _acquire(self) -> None:
    now = time.time()
    self._info = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': now, 'heartbeat': now,
                  'token': uuid.uuid4().hex}
    for _ in range(3):
      if self._create():
        self._thread = threading.Thread(target=self._beat, name='trainer_lock_heartbeat', daemon=True)
        self._thread.start()
        return
      other = self._read()
      if other is None:  # released meanwhile
        continue
      reason = 'forced by --force_unlock' if self._force else self._stale_reason(other)
      if reason is None:
        raise WorkdirLockedError(
            f'the workdir is in use by another trainer: {_owner(other)}, last heartbeat '
            f'{time.time() - other.get("heartbeat", 0):.0f} s ago ({self.path}). If that run is dead, rerun with '
            f'--force_unlock or delete {self.path}; a lock is stale {self._stale_s / 60:g} min after its last '
            'heartbeat.')
      print(f'Taking over the lock of a trainer that is gone ({_owner(other)}): {reason}.', flush=True)
      try:
        self.path.unlink()
      except FileNotFoundError:
        pass
    raise WorkdirLockedError(f'could not take the workdir lock {self.path}: other trainers keep taking it')

  def _stale_reason(self, other: dict) -> str | None:
    if other.get('host') == socket.gethostname() and isinstance(other.get('pid'), int) \
        and not _pid_alive(other['pid']):
      return f'process {other["pid"]} is not running'
    age = time.time() - float(other.get('heartbeat', 0))
    if age > self._stale_s:
      return f'no heartbeat for {age / 60:.0f} min'
    return None

  def _create(self) -> bool:
    """Writes the lock file unless it exists; True when written."""
    data = json.dumps(self._info) + '\n'
    if self._remote:
      if self.path.exists():
        return False
      self.path.write_text(data)
      return True
    self.path.parent.mkdir(parents=True, exist_ok=True)
    temporary = self.path.parent / f'.{LOCK_FILE}.{self._info["token"]}.tmp'
    temporary.write_text(data)
    try:
      os.link(temporary, self.path)
      return True
    except FileExistsError:
      return False
    finally:
      temporary.unlink()

  def _read(self) -> dict | None:
    """The lock's content; {} when unreadable (treated as stale), None when there is no lock."""
    try:
      info = json.loads(self.path.read_text())
      return info if isinstance(info, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _ours(self) -> bool:
    current = self._read()
    return bool(current) and current.get('token') == self._info['token']

  def _beat(self) -> None:
    while not self._stop.wait(self._heartbeat_s):
      try:
        if not self._ours():
          print(f'Warning: the workdir lock {self.path} was taken by another trainer.', flush=True)
          return
        self._info['heartbeat'] = time.time()
        write_atomic(self.path, json.dumps(self._info) + '\n')
      except OSError:
        pass  # a full disk stops the run at its next save; the heartbeat tries again

  def release(self) -> None:
    if self._info is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      if self._ours():
        self.path.unlink()
    except OSError:
      pass
    self._info = None


def _owner(info: dict) -> str:
  if not info:
    return 'unreadable lock file'
  started = info.get('started')
  return (f'host {info.get("host", "?")}, pid {info.get("pid", "?")}, since '
          f'{_stamp(started) if isinstance(started, (int, float)) else "?"}')
