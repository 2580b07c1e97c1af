"""`--mode check_data`: decode every sample of the configured splits and report every problem, by file."""
from __future__ import annotations

import time

import ml_collections
import numpy as np

from ctxseg_jax import reporting
from ctxseg_jax.data import datasets
from ctxseg_jax.data.datasets.base import DataError, check_sample


def check_data(config: ml_collections.ConfigDict) -> list[str]:
  """Walks the train and eval splits; prints class frequencies; returns the problems found (empty when clean)."""
  info = datasets.dataset_info(config.data)
  problems: list[str] = []
  for split in dict.fromkeys((config.data.train_split, config.data.eval_split)):
    try:
      source = datasets.build_source(config.data, split)
    except DataError as e:
      problems.append(str(e))
      continue
    counts = np.zeros(256, np.int64)
    start, n = time.time(), len(source)
    eval_h, eval_w = config.data.eval_size
    for index in range(n):
      name = source.sample_name(index)
      try:
        sample = source[index]
      except DataError as e:
        problems.append(str(e))
        continue
      except Exception as e:  # an unexpected decoder failure still names the sample
        problems.append(f'{name}: {type(e).__name__}: {e}')
        continue
      label_file = source.label_path(index) if hasattr(source, 'label_path') else None
      sample_problems = check_sample(sample, info, name, label_file)
      problems.extend(sample_problems)
      if sample_problems:
        continue
      counts += np.bincount(sample['label'].reshape(-1), minlength=256)
      height, width = sample['label'].shape
      if split == config.data.eval_split and (height > eval_h or width > eval_w):
        problems.append(f'{name}: {height}x{width} (HxW) is larger than config.data.eval_size={(eval_h, eval_w)}')
      if (index + 1) % max(n // 10, 1) == 0 or index + 1 == n:
        reporting.console(f'  {split}: {index + 1}/{n} samples checked ({time.time() - start:.1f}s)')
    reporting.console(_frequency_table(split, counts, info))
  if problems:
    reporting.console(f'{len(problems)} problem(s):\n  ' + '\n  '.join(problems))
  else:
    reporting.console('No problems found.')
  return problems


def _frequency_table(split: str, counts: np.ndarray, info) -> str:
  total = max(int(counts.sum()), 1)
  lines = [f'Class frequencies in {info.name}/{split} ({total:,} pixels):']
  for class_id, name in enumerate(info.class_names):
    lines.append(f'  {class_id:>3} {name:<20}{100 * counts[class_id] / total:8.3f}%')
  lines.append(f'  {"":>3} {"ignore":<20}{100 * counts[info.ignore_index] / total:8.3f}%')
  return '\n'.join(lines)
