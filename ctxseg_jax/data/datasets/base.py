"""The interface every dataset implements: class metadata and a random-access source of samples.

A source is a grain `RandomAccessDataSource` (`__len__`, `__getitem__`) whose samples are dicts

    segmentation:   {'image': uint8 (H, W, 3) RGB, 'label': uint8 (H, W) class ids or ignore_index, 'name': str}
    classification: {'image': uint8 (H, W, 3) RGB, 'label': int32 () the image's class id, 'name': str}

with labels already mapped to training ids (0..num_classes-1, ignore_index elsewhere). Which of the two a dataset
holds is its `DatasetInfo.task`. Sources must be picklable (grain sends them to worker processes) and cheap to
construct: no decoding at construction time.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


# The label value for "not scored": padding and every dataset's ignored pixels (readers map their own to it).
IGNORE_INDEX = 255
# What a dataset's labels are: a class id per pixel, or one per image.
TASKS = ('segmentation', 'classification')


class DataError(ValueError):
  """A dataset problem a person must fix: names the file or sample, what is wrong, and how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset: known without reading any sample."""
  name: str
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]  # one RGB colour per class, for visualisation
  ignore_index: int = IGNORE_INDEX
  task: str = 'segmentation'  # one of TASKS

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __post_init__(self):
    if len(self.palette) != len(self.class_names):
      raise ValueError(f'{self.name}: {len(self.class_names)} class names but {len(self.palette)} palette colours')
    if 0 <= self.ignore_index < len(self.class_names):
      raise ValueError(f'{self.name}: ignore_index {self.ignore_index} collides with a class id')
    if self.task not in TASKS:
      raise ValueError(f'{self.name}: task {self.task!r} is not one of {TASKS}')


class SegmentationSource(Protocol):
  """What the input pipeline and `--mode check_data` need from a dataset split."""
  info: DatasetInfo
  split: str

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> dict:
    """Decodes sample `index`; raises DataError naming the file when it cannot."""
    ...

  def sample_name(self, index: int) -> str:
    """A human-readable identity of sample `index` (a file path, or 'synthetic_context/train/17')."""
    ...


def source_task(source) -> str:
  """The task of a source's dataset (DatasetInfo.task): 'segmentation' for a source without dataset metadata (a
  folder of images to predict, a subset of a split)."""
  info = getattr(source, 'info', None)
  return info.task if info is not None else 'segmentation'


def check_sample(sample: dict, info: DatasetInfo, where: str, label_where: str | None = None) -> list[str]:
  """Returns the problems of one decoded sample (empty when it is valid), each naming `where`, or for problems
  of the label values alone `label_where` (the label file) when given. The label is a map or, for a
  classification dataset (`info.task`), one class id."""
  problems = []
  image, label = sample.get('image'), sample.get('label')
  if image is None or label is None:
    return [f'{where}: sample lacks {"image" if image is None else "label"}']
  if image.dtype.name != 'uint8' or image.ndim != 3 or image.shape[2] != 3:
    problems.append(f'{where}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}')
  if info.task == 'classification':
    label = np.asarray(label)
    if label.ndim != 0 or label.dtype.kind not in 'iu':
      return problems + [f'{where}: label must be one integer class id, got {label.dtype} {label.shape}']
    if not 0 <= int(label) < info.num_classes:
      problems.append(f'{label_where or where}: label {int(label)} is outside the classes 0..{info.num_classes - 1}')
    return problems
  if label.dtype.name != 'uint8':
    problems.append(f'{where}: label must be uint8, got {label.dtype}')
  if label.ndim != 2:
    problems.append(f'{where}: label must be (H, W), got shape {label.shape}')
  elif image.ndim == 3 and image.shape[:2] != label.shape:
    problems.append(f'{where}: image is {image.shape[1]}x{image.shape[0]} (WxH) but label is '
                    f'{label.shape[1]}x{label.shape[0]}; they must be the same size')
  values = set(int(v) for v in np.unique(label))
  bad = sorted(v for v in values if not (0 <= v < info.num_classes or v == info.ignore_index))
  if bad:
    problems.append(f'{label_where or where}: label values {bad[:10]} are outside the classes '
                    f'0..{info.num_classes - 1} and the ignore value {info.ignore_index}')
  return problems

