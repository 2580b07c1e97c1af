"""data.name='cifar10_tfds': TFDS `cifar10`, once prepared, read by index like any other source.

TFDS prepares cifar10 by downloading the binary distribution, so this source does not prepare it: it reads a
dataset prepared as ArrayRecord files under `config.data.tfds_data_dir` ('' = TFDS's default,
~/tensorflow_datasets), and otherwise says how to prepare it. Reading needs no TensorFlow: `tfds.data_source` gives
each record with its PNG left encoded, decoded here like any image file. The splits are 'train' (50000) and 'test'
(10000), in the order TFDS wrote them.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import cifar10
from ctxseg_jax.data.datasets import files
from ctxseg_jax.data.datasets import tfds_records

TFDS_NAME = 'cifar10'
SPLITS = {'train': 'train', 'test': 'test'}
_OFFICIAL_SIZE = {'train': 5 * cifar10.RECORDS_PER_FILE, 'test': cifar10.RECORDS_PER_FILE}


def _not_prepared_error(prepared_dir: str, data_dir: str) -> base.DataError:
  return base.DataError(
      f'{prepared_dir}: TFDS cifar10 is not prepared there. data.name=cifar10_tfds reads a prepared dataset; '
      f'prepare it once (a 163 MB download; needs tensorflow-cpu, which {tfds_records.INSTALL} installs) with\n'
      f'  tfds build cifar10 --data_dir={data_dir} --file_format=array_record\n'
      'and set --config.data.tfds_data_dir to that folder, or read the binary distribution with '
      '--config.data.name=cifar10 --config.data.root=<the extracted cifar-10-batches-bin folder>.')


class Cifar10TfdsSource:
  """One split of TFDS cifar10: a grain random-access source of {'image', 'label', 'name'} samples.

  Attributes:
    info: cifar10.CIFAR10_INFO (TFDS cifar10's label ids are the binary files' label bytes).
    split: 'train' or 'test'.
    prepared_dir: the folder of the prepared dataset (<tfds_data_dir>/cifar10/<version>).
    notes: a split size that differs from the official one.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, split: str):
    self.info, self.split = cifar10.CIFAR10_INFO, split
    tfds_split = files.resolve_split('cifar10_tfds', split, SPLITS)
    tfds = tfds_records.import_tfds('cifar10_tfds', 'tensorflow-datasets')
    builder = tfds.builder(TFDS_NAME, data_dir=data_config.tfds_data_dir or None)
    data_dir, self.prepared_dir = str(builder.data_dir_root), str(builder.data_dir)
    if not builder.is_prepared():
      raise _not_prepared_error(self.prepared_dir, data_dir)
    self._records = tfds_records.open_records(
        tfds, 'cifar10_tfds', TFDS_NAME, tfds_split, data_dir=data_dir, prepared_dir=self.prepared_dir,
        decoders={'image': tfds.decode.SkipDecoding()})
    self.notes: list[str] = []
    if len(self) != _OFFICIAL_SIZE[tfds_split]:
      self.notes.append(f'cifar10_tfds/{split} in {self.prepared_dir}: {len(self)} records, the official split has '
                        f'{_OFFICIAL_SIZE[tfds_split]}. Fine for a subset.')

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    """Returns {'image': uint8 (32, 32, 3), 'label': int32 () class id, 'name': the TFDS id (e.g. 'train_00017')}."""
    record = self._records[int(index)]
    name = tfds_records.text(record['id'])
    where = f'{self.sample_name(index)} ({name})'
    fix = f'the prepared dataset is damaged: delete {self.prepared_dir} and prepare it again'
    image = files.rgb_array(files.decode_bytes(record['image'], where, fix))
    return {'image': image, 'label': np.int32(record['label']), 'name': name}

  def sample_name(self, index: int) -> str:
    return f'{self.prepared_dir}/{self.split}[{index}]'

  def sample_size(self, index: int) -> tuple[int, int]:
    del index
    return cifar10.IMAGE_SIZE, cifar10.IMAGE_SIZE

  def __repr__(self) -> str:
    return f'Cifar10TfdsSource(split={self.split!r}, prepared_dir={self.prepared_dir!r}, num_samples={len(self)})'

