"""CIFAR-10 in its official binary distribution: 10 classes of 32x32 images, one class per image.

The binary version (cifar-10-binary.tar.gz, extracted) is read as it is; the python version (pickled numpy arrays)
is not supported, so nothing is ever unpickled. Each batch file is a sequence of 3073-byte records: the class id in
one byte, then the 32x32 image as 3072 bytes, the red, green and blue planes one after the other, each row by row.
Records are read by index (a seek and a read), so the source holds only the file names and their record counts.
"""
from __future__ import annotations

import ml_collections
import numpy as np
from etils import epath

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import files

IMAGE_SIZE = 32
RECORD_BYTES = 1 + 3 * IMAGE_SIZE * IMAGE_SIZE  # 3073
RECORDS_PER_FILE = 10_000
FOLDER = 'cifar-10-batches-bin'
SPLIT_FILES = {'train': tuple(f'data_batch_{i}.bin' for i in range(1, 6)), 'test': ('test_batch.bin',)}

CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (128, 128, 128))
CIFAR10_INFO = base.DatasetInfo(name='cifar10', class_names=CLASS_NAMES, palette=PALETTE, task='classification')

ROOT_EXAMPLE = '/data/cifar-10-batches-bin'
LAYOUT = f"""\
  <root>/data_batch_1.bin ... data_batch_5.bin   train, {RECORDS_PER_FILE} records of {RECORD_BYTES} bytes each
  <root>/test_batch.bin                          test, {RECORDS_PER_FILE} records
  (<root> may also be the folder that holds {FOLDER}/)"""
PREPARE = """\
Prepare it: download the binary version, cifar-10-binary.tar.gz, from https://www.cs.toronto.edu/~kriz/cifar.html
and extract it (tar xzf cifar-10-binary.tar.gz); data.root is the extracted cifar-10-batches-bin folder."""
_REEXTRACT = 're-extract it from cifar-10-binary.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html)'


class Cifar10BinarySource:
  """One split of the binary CIFAR-10 batches: a grain random-access source of {'image', 'label', 'name'}.

  Attributes:
    info: CIFAR10_INFO.
    split: 'train' (data_batch_1..5.bin) or 'test' (test_batch.bin).
    root: the folder holding the batch files.
    files: the split's files that exist, with their number of whole records, in order.
    problems: a file missing, or one whose size is not a whole number of records (truncated); the whole records of
      a truncated file are still read (--mode check_data decodes them), but training refuses the split.
    notes: a file with another number of records than the official 10000.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, split: str):
    self.info, self.split = CIFAR10_INFO, split
    names = SPLIT_FILES[files.resolve_split('cifar10', split, {name: name for name in SPLIT_FILES})]
    root = files.dataset_root(data_config, 'cifar10', ROOT_EXAMPLE, LAYOUT, PREPARE)
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    if not any((folder / name).exists() for name in names):
      raise files.missing_folder_error(folder / names[0], f'the {split} batches of data.name=cifar10', LAYOUT,
                                       PREPARE)
    self.root = str(folder)
    self.files: list[tuple[str, int]] = []
    self.problems: list[str] = []
    self.notes: list[str] = []
    for name in names:
      path = folder / name
      if not path.exists():
        self.problems.append(f'{path}: missing (the {split} split is {", ".join(names)}); {_REEXTRACT}')
        continue
      size = path.stat().length
      records, extra = divmod(size, RECORD_BYTES)
      if extra:
        self.problems.append(f'{path}: {size} bytes is not a whole number of {RECORD_BYTES}-byte records '
                             f'({records} whole, {extra} bytes over): the file is truncated or not a CIFAR-10 '
                             f'binary batch; {_REEXTRACT}')
      elif records != RECORDS_PER_FILE:
        self.notes.append(f'{path}: {records} records, the official file has {RECORDS_PER_FILE}. Fine for a '
                          'subset; otherwise re-extract it.')
      self.files.append((str(path), records))
    self._starts = np.cumsum([0] + [records for _, records in self.files])

  def raise_problems(self) -> None:
    files.raise_listing_problems(f'cifar10/{self.split} in {self.root}', self.problems)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _locate(self, index: int) -> tuple[str, int]:
    """(file, record number within it) of sample `index`."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'cifar10/{self.split}: index {index} out of range [0, {len(self)})')
    file_index = int(np.searchsorted(self._starts, index, side='right')) - 1
    return self.files[file_index][0], index - int(self._starts[file_index])

  def __getitem__(self, index: int) -> dict:
    """Returns {'image': uint8 (32, 32, 3), 'label': int32 () class id, 'name': '<file>[<record>]'}."""
    path, record = self._locate(index)
    name = f'{path}[{record}]'
    try:
      with epath.Path(path).open('rb') as f:
        f.seek(record * RECORD_BYTES)
        data = f.read(RECORD_BYTES)
    except OSError as e:
      raise base.DataError(f'{name}: cannot read the record ({e})') from e
    if len(data) != RECORD_BYTES:
      raise base.DataError(f'{name}: the file ends inside this record ({len(data)} of {RECORD_BYTES} bytes); '
                           f'{_REEXTRACT}')
    label = data[0]
    if label >= self.info.num_classes:
      raise base.DataError(f'{name}: label byte {label} is not a CIFAR-10 class id (0..{self.info.num_classes - 1}): '
                           f'the file is damaged or another dataset (CIFAR-100 records start with two label bytes); '
                           f'{_REEXTRACT}')
    planes = np.frombuffer(data, np.uint8, offset=1).reshape(3, IMAGE_SIZE, IMAGE_SIZE)
    return {'image': np.ascontiguousarray(planes.transpose(1, 2, 0)), 'label': np.int32(label), 'name': name}

  def sample_name(self, index: int) -> str:
    path, record = self._locate(index)
    return f'{path}[{record}]'

  def sample_size(self, index: int) -> tuple[int, int]:
    del index
    return IMAGE_SIZE, IMAGE_SIZE

  def __repr__(self) -> str:
    return f'Cifar10BinarySource(split={self.split!r}, root={self.root!r}, num_samples={len(self)})'


def build_source(data_config: ml_collections.ConfigDict, split: str) -> Cifar10BinarySource:
  return Cifar10BinarySource(data_config, split)
