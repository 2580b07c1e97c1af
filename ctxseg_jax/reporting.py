"""Where logged scalars go: TensorBoard event files and <workdir>/metrics.jsonl, written by process 0 only.

metrics.jsonl holds one JSON object per line: {"step": int, "split": "train" | "eval", <name>: value, ...}.
"""
from __future__ import annotations

import json
import math
import time

import jax
from etils import epath

METRICS_FILE = 'metrics.jsonl'


def console(message: str) -> None:
  """Prints a user-facing line (progress, tables) from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def read_metrics(workdir: str | epath.Path) -> list[dict]:
  """All records of <workdir>/metrics.jsonl (empty when the file does not exist)."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricWriter:
  """Writes scalars to TensorBoard (<workdir>/tensorboard/<split>) and appends them to metrics.jsonl.

  On resume, `resume_step` drops the records after that step (they belong to steps that will run again), so
  the file reads as one uninterrupted run; TensorBoard purges those events the same way.
  """

  def __init__(self, workdir: str | epath.Path, *, resume_step: int | None = None):
    self._enabled = jax.process_index() == 0
    self._path = epath.Path(workdir) / METRICS_FILE
    self._tensorboard = {}
    self._workdir = epath.Path(workdir)
    self._purge_step = None if resume_step is None else resume_step + 1  # TensorBoard hides steps >= this
    if self._enabled and resume_step is not None and self._path.exists():
      kept = [r for r in read_metrics(workdir) if r['step'] <= resume_step]
      self._path.write_text(''.join(json.dumps(r) + '\n' for r in kept))

  def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, **{k: _json_number(v) for k, v in scalars.items()}}
    self._append(json.dumps(record) + '\n')
    writer = self._tensorboard_writer(split)
    for name, value in scalars.items():
      if math.isfinite(float(value)):  # a class absent from the split has no IoU: a gap in the curve, not a NaN
        writer.add_scalar(name, float(value), global_step=int(step), walltime=time.time())
    writer.flush()

  def _append(self, line: str) -> None:
    if str(self._path).startswith('gs://'):
      # Object stores cannot append: rewrite the (small) file.
      previous = self._path.read_text() if self._path.exists() else ''
      self._path.write_text(previous + line)
    else:
      self._path.parent.mkdir(parents=True, exist_ok=True)
      with self._path.open('a') as f:
        f.write(line)

  def _tensorboard_writer(self, split: str):
    if split not in self._tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes
      self._tensorboard[split] = SummaryWriter(logdir=str(self._workdir / 'tensorboard' / split),
                                               purge_step=self._purge_step)
    return self._tensorboard[split]

  def close(self) -> None:
    for writer in self._tensorboard.values():
      writer.close()
    self._tensorboard = {}


def _json_number(value) -> float | int | None:
  value = float(value)
  return None if math.isnan(value) else value
