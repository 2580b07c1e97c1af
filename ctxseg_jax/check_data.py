"""`--mode check_data`: decode every sample of the configured splits and report every problem, by file.

Files are decoded by `config.data.worker_count` threads (at least 1; decoding releases the GIL), with a progress
bar on stderr. Reported: listing problems (an image without its label, ...), unreadable or truncated files,
label values outside the classes and the ignore value, image/label size mismatches, eval images that do not fit
the static eval shapes, split sizes that differ from the official ones, and the class frequencies per split.
"""
from __future__ import annotations

import concurrent.futures
import sys
import time

import ml_collections
import numpy as np

from ctxseg_jax import reporting
from ctxseg_jax.data import datasets
from ctxseg_jax.data import pipeline
from ctxseg_jax.data import transforms
from ctxseg_jax.data.datasets.base import DataError, check_sample


class ProgressBar:
  """One self-updating line on a terminal; a line per tenth of the work elsewhere (logs, CI)."""

  def __init__(self, title: str, total: int, stream=None):
    self.title, self.total, self.stream = title, max(total, 1), stream or sys.stderr
    self.start, self.done, self._last_tenth = time.time(), 0, -1
    self.interactive = hasattr(self.stream, 'isatty') and self.stream.isatty()

  def update(self, done: int) -> None:
    self.done = done
    elapsed = time.time() - self.start
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - done) / rate if rate > 0 else 0.0
    filled = int(30 * done / self.total)
    line = (f'{self.title} [{"#" * filled}{"." * (30 - filled)}] {done}/{self.total} '
            f'{rate:.1f} files/s, {elapsed:.0f}s elapsed, ETA {eta:.0f}s')
    if self.interactive:
      print('\r' + line, end='\n' if done >= self.total else '', file=self.stream, flush=True)
    elif done * 10 // self.total > self._last_tenth or done >= self.total:
      self._last_tenth = done * 10 // self.total
      print(line, file=self.stream, flush=True)


def _check_one(source, index: int, info,
               eval_preprocess: transforms.EvalPreprocess | transforms.ClassificationEvalPreprocess | None
               ) -> tuple[list[str], np.ndarray | None]:
  """Problems of sample `index` and its label histogram (None when it could not be read)."""
  name = source.sample_name(index)
  try:
    sample = source[index]
  except DataError as e:
    return [str(e)], None
  except Exception as e:  # an unexpected decoder failure still names the sample
    return [f'{name}: {type(e).__name__}: {e}'], None
  label_file = source.label_path(index) if hasattr(source, 'label_path') else None
  problems = check_sample(sample, info, name, label_file)
  if problems:
    return problems, None
  if eval_preprocess is not None:
    problems.extend(eval_preprocess.shape_problems(name, *sample['image'].shape[:2]))
  return problems, np.bincount(np.asarray(sample['label']).reshape(-1), minlength=256)


def check_split(config: ml_collections.ConfigDict, split: str, info) -> list[str]:
  """Checks one split; prints its notes and class frequencies; returns its problems."""
  try:
    source = datasets.build_source(config.data, split, strict=False)
  except DataError as e:
    return [str(e)]
  problems = list(getattr(source, 'problems', []))
  for note in getattr(source, 'notes', []):
    reporting.console(f'Note: {note}')
  eval_preprocess = (pipeline.eval_preprocess(config.data, config.eval, info.task) if split == config.data.eval_split
                     else None)
  counts = np.zeros(256, np.int64)
  progress = ProgressBar(f'Checking {info.name}/{split}', len(source))
  with concurrent.futures.ThreadPoolExecutor(max(config.data.worker_count, 1)) as pool:
    results = pool.map(lambda i: _check_one(source, i, info, eval_preprocess), range(len(source)))
    for done, (sample_problems, histogram) in enumerate(results, 1):
      problems.extend(sample_problems)
      if histogram is not None:
        counts += histogram
      progress.update(done)
  reporting.console(_frequency_table(split, counts, info))
  return problems


def check_data(config: ml_collections.ConfigDict) -> list[str]:
  """Walks the train and eval splits; prints class frequencies; returns the problems found (empty when clean)."""
  info = datasets.dataset_info(config.data)
  problems: list[str] = []
  for split in dict.fromkeys((config.data.train_split, config.data.eval_split)):
    problems.extend(check_split(config, split, info))
  if problems:
    reporting.console(f'{len(problems)} problem(s):\n  ' + '\n  '.join(problems))
  else:
    reporting.console('No problems found.')
  return problems


def _frequency_table(split: str, counts: np.ndarray, info) -> str:
  total = max(int(counts.sum()), 1)
  unit = 'images' if info.task == 'classification' else 'pixels'
  lines = [f'Class frequencies in {info.name}/{split} ({total:,} {unit}):']
  for class_id, name in enumerate(info.class_names):
    lines.append(f'  {class_id:>3} {name:<20}{100 * counts[class_id] / total:8.3f}%')
  if info.task != 'classification':
    lines.append(f'  {"":>3} {"ignore":<20}{100 * counts[info.ignore_index] / total:8.3f}%')
  return '\n'.join(lines)
