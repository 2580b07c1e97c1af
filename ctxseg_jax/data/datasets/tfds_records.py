"""What the TFDS sources share: importing TFDS, and opening a prepared dataset's split for reading by index.

`tfds.data_source` reads ArrayRecord files by index, without TensorFlow; its failures become DataErrors that name
the prepared dataset's folder and the fix.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ctxseg_jax.data.datasets import base

INSTALL = "pip install -e '.[tfds]'"


def import_tfds(data_name: str, needs: str) -> Any:
  """tensorflow_datasets, or a DataError naming data.name=`data_name`, what it `needs` and the install command."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise base.DataError(f'data.name={data_name} reads the dataset with TFDS, which is not installed: {INSTALL} '
                         f'({needs})') from e
  return tfds


def open_records(tfds: Any, data_name: str, tfds_name: str, split: str, *, data_dir: str, prepared_dir: str,
                 task: str = 'read', **data_source_kwargs: Any) -> Any:
  """The records of `split` of the TFDS dataset `tfds_name` (tfds.data_source), by index.

  `task` says what the call does beyond reading (e.g. preparing the dataset first), for the error when TFDS lacks
  a module for it; a dataset prepared in another file format than ArrayRecord is named with the command that adds
  ArrayRecord files.
  """
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, **data_source_kwargs)
  except ModuleNotFoundError as e:
    raise base.DataError(f'TFDS lacks the module {e.name!r} to {task}: {tfds_name} in {prepared_dir}. Install '
                         f'what the TFDS source needs with {INSTALL}') from e
  except NotImplementedError as e:
    raise base.DataError(
        f'{prepared_dir} holds {tfds_name} in another file format; data.name={data_name} reads it by index, '
        f'which needs ArrayRecord files. Add them once with\n  tfds convert_format --dataset_version_dir='
        f'{prepared_dir} --out_file_format=array_record\nor point --config.data.tfds_data_dir at an empty folder '
        'to prepare the dataset again.') from e


def text(value: Any) -> str:
  """A TFDS Text feature as read by the data source (bytes, or a numpy bytes/str scalar) as str."""
  value = np.asarray(value).item()
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)
