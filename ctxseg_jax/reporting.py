"""Where logged scalars go: TensorBoard event files and <workdir>/metrics.jsonl, written by process 0 only.

metrics.jsonl holds one JSON object per line: {"step": int, "split": "train" | "eval", <name>: value, ...}.
"""
from __future__ import annotations

import json
import math
import time

import jax
from absl import logging
from etils import epath

from ctxseg_jax import storage

METRICS_FILE = 'metrics.jsonl'


def console(message: str) -> None:
  """Prints a user-facing line (progress, tables) from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def read_metrics(workdir: str | epath.Path) -> list[dict]:
  """All records of <workdir>/metrics.jsonl (empty when the file does not exist).

  A line that is not a whole JSON record (the last line of a run killed mid-write) is left out with a warning.
  """
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records, bad = [], []
  lines = path.read_text().splitlines()
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict) and 'step' in record:
      records.append(record)
    else:
      bad.append(number)
  if bad:
    what = ('a truncated last line' if bad == [len(lines)] else f'line(s) {", ".join(map(str, bad))} (not whole '
            'JSON records)')
    logging.warning('%s: ignoring %s, probably written by a run killed mid-write', path, what)
  return records


class MetricWriter:
  """Writes scalars to TensorBoard (<workdir>/tensorboard/<split>) and appends them to metrics.jsonl.

  On resume, `resume_step` drops the records after that step (they belong to steps that will run again), so
  the file reads as one uninterrupted run; TensorBoard purges those events the same way. The trimmed file is
  written atomically (a temporary file renamed over it). With `fresh_start` (training from step 0), records of an
  earlier run are not appended to: that file is kept beside it as metrics.<time>.jsonl, and TensorBoard hides
  that run's events.

  Object stores (gs://) cannot append: there (`rewrite`, by default for any scheme://) the file is rewritten with
  the new records at most every `rewrite_every_s` seconds, on every eval record, on `flush` (the trainer's, at each
  checkpoint: a run killed later has all the records up to its last checkpoint) and on close, not on every train
  record.
  """

  def __init__(self, workdir: str | epath.Path, *, resume_step: int | None = None, fresh_start: bool = False,
               rewrite: bool | None = None, rewrite_every_s: float = 60.0):
    self._enabled = jax.process_index() == 0
    self._path = epath.Path(workdir) / METRICS_FILE
    self._tensorboard = {}
    self._workdir = epath.Path(workdir)
    self._rewrite = '://' in str(workdir) if rewrite is None else rewrite
    self._rewrite_every_s = rewrite_every_s
    self._unwritten: list[str] = []
    self._last_flush = time.monotonic()
    self._purge_step = None if resume_step is None else resume_step + 1  # TensorBoard hides steps >= this
    if self._enabled and resume_step is not None and self._path.exists():
      kept = [r for r in read_metrics(workdir) if r['step'] <= resume_step]
      storage.write_atomic(self._path, ''.join(json.dumps(r) + '\n' for r in kept))
    elif self._enabled and fresh_start and self._path.exists():
      if read_metrics(workdir):
        kept = self._path.parent / f'metrics.{time.strftime("%Y%m%d-%H%M%S")}.jsonl'
        self._path.rename(kept)
        console(f'{self._path} held records of an earlier run without a checkpoint: kept as {kept}; starting '
                'a new one.')
        self._purge_step = 0
      else:
        self._path.unlink()

  def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, **{k: _json_number(v) for k, v in scalars.items()}}
    self._unwritten.append(json.dumps(record) + '\n')
    if not self._rewrite or split != 'train' or time.monotonic() - self._last_flush >= self._rewrite_every_s:
      self.flush()
    writer = self._tensorboard_writer(split)
    for name, value in scalars.items():
      if math.isfinite(float(value)):  # a class absent from the split has no IoU: a gap in the curve, not a NaN
        writer.add_scalar(name, float(value), global_step=int(step), walltime=time.time())
    writer.flush()

  def flush(self) -> None:
    """Writes the records not yet in metrics.jsonl."""
    if not self._enabled or not self._unwritten:
      return
    lines = ''.join(self._unwritten)
    if self._rewrite:
      previous = self._path.read_text() if self._path.exists() else ''
      if previous and not previous.endswith('\n'):
        previous += '\n'  # a line cut short by a killed run stays a line of its own
      storage.write_atomic(self._path, previous + lines)
    else:
      self._path.parent.mkdir(parents=True, exist_ok=True)
      with open(self._path, 'a+b') as f:  # local: appending is what `rewrite` avoids elsewhere
        if f.tell() > 0:
          f.seek(-1, 2)
          if f.read(1) != b'\n':
            lines = '\n' + lines  # a line cut short by a killed run stays a line of its own
        f.write(lines.encode())
    self._unwritten, self._last_flush = [], time.monotonic()

  def _tensorboard_writer(self, split: str):
    if split not in self._tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes
      self._tensorboard[split] = SummaryWriter(logdir=str(self._workdir / 'tensorboard' / split),
                                               purge_step=self._purge_step)
    return self._tensorboard[split]

  def close(self) -> None:
    self.flush()
    for writer in self._tensorboard.values():
      writer.close()
    self._tensorboard = {}


def _json_number(value) -> float | int | None:
  value = float(value)
  return None if math.isnan(value) else value
