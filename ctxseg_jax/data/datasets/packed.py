"""A dataset packed into ArrayRecord shards by `python -m ctxseg_jax.data.pack`, for hosts that read from GCS:

    root/dataset.json                     the folder layout's metadata plus
                                          "format": "ctxseg_jax.packed/1",
                                          "splits": {"train": {"num_records": N, "shards": [file names]}, ...}
    root/<split>-<i>-of-<n>.array_record  one record per sample: a msgpack map
                                          {"image": encoded bytes (the source's JPEG/PNG file, or PNG),
                                           "label": PNG bytes of training ids (mode L),
                                           "name": the source image path, "height": int, "width": int}

Records hold training ids, so reading needs no dataset-specific label mapping; labels are still checked against
the classes and ignore index of dataset.json.
"""
from __future__ import annotations

from importlib import metadata
import json
import re
import threading
from typing import Any

from etils import epath
import msgpack
import numpy as np

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import files
from ctxseg_jax.data.datasets import folder

FORMAT = 'ctxseg_jax.packed/1'
_READS_GCS_FROM = (0, 8, 3)  # the first array-record release that opens gs:// paths itself
LAYOUT = f"""\
  <root>/dataset.json                      metadata, "format": "{FORMAT}", the splits and their shards
  <root>/<split>-00000-of-000NN.array_record
Write one with: python -m ctxseg_jax.data.pack --config <config.py> --out <root>"""


def _release(version: str) -> tuple[int, ...]:
  """(0, 8, 6) for '0.8.6' (or '0.8.6rc1')."""
  return tuple(int(part) for part in re.findall(r'\d+', version)[:3])


def encode_record(image_bytes: bytes, label_png: bytes, name: str, height: int, width: int) -> bytes:
  """One packed sample as msgpack bytes."""
  return msgpack.packb({'image': image_bytes, 'label': label_png, 'name': name, 'height': height, 'width': width},
                       use_bin_type=True)


def decode_record(record: bytes, where: str) -> dict[str, Any]:
  """The msgpack map of one record; a DataError naming `where` when it is not one."""
  try:
    fields = msgpack.unpackb(record, raw=False)
  except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as e:
    raise base.DataError(f'{where}: not a packed sample ({e}); re-pack the dataset') from e
  missing = {'image', 'label', 'name', 'height', 'width'} - set(fields if isinstance(fields, dict) else ())
  if missing:
    raise base.DataError(f'{where}: packed sample lacks {sorted(missing)}; re-pack with this version')
  return fields


def _metadata(root: str | epath.PathLike) -> tuple[epath.Path, dict]:
  if not root:
    raise base.DataError('config.data.root is empty; data.name=packed reads a packed dataset: set '
                         f'--config.data.root=<dir or gs://bucket/dir>, laid out as\n{LAYOUT}')
  root = epath.Path(root)
  path = root / folder.INFO_FILE
  if not path.exists():
    raise base.DataError(f'{path} is missing: {root} is not a packed dataset. Expected the layout\n{LAYOUT}')
  try:
    raw = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise base.DataError(f'{path}: not valid JSON ({e}); re-pack the dataset') from e
  if not isinstance(raw, dict) or raw.get('format') != FORMAT:
    raise base.DataError(f'{path}: "format" is {raw.get("format") if isinstance(raw, dict) else None!r}, expected '
                         f'{FORMAT!r}; re-pack the dataset with this version (python -m ctxseg_jax.data.pack)')
  return root, raw


def packed_info(root: str | epath.PathLike) -> base.DatasetInfo:
  root, raw = _metadata(root)
  return folder.parse_info({k: raw[k] for k in folder.INFO_KEYS if k in raw}, root / folder.INFO_FILE)


class PackedSource:
  """One split of a packed dataset: random access to decoded samples (grain reads it in worker processes)."""

  def __init__(self, root: str | epath.PathLike, split: str):
    root, raw = _metadata(root)
    self.info = packed_info(root)
    self.split, self.root = split, str(root)
    splits = raw.get('splits', {})
    if split not in splits:
      raise base.DataError(f'{root / folder.INFO_FILE}: no split {split!r}; packed splits are {sorted(splits)} '
                           '(pack it with --splits, or check --config.data.train_split/eval_split)')
    shards = [root / name for name in splits[split]['shards']]
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
      raise base.DataError(f'{root}: the {split} shards {missing[:5]} are missing; copy the whole packed folder')
    self.shards = [str(p) for p in shards]
    self.num_records = int(splits[split]['num_records'])
    self.problems: list[str] = []
    self._reader = None
    self._lock = threading.Lock()
    self._label_map = files.identity_map(self.info.num_classes, self.info.ignore_index)

  def _records(self):
    with self._lock:  # opened lazily (the source is pickled to grain workers first), once for all threads
      return self._open()

  def _open(self):
    if self._reader is None:
      from array_record.python import array_record_data_source
      try:
        reader = array_record_data_source.ArrayRecordDataSource(self.shards)
      except (RuntimeError, OSError) as e:
        version = metadata.version('array-record')
        hint = (f' array-record {version} cannot open gs:// paths: install the gcs extra (pip install '
                f'"ctxseg_jax[gcs]", array-record>={".".join(map(str, _READS_GCS_FROM))}), or mount the bucket '
                '(gcsfuse --implicit-dirs BUCKET /mnt/BUCKET) and set --config.data.root to the mounted folder.'
                if self.root.startswith('gs://') and _release(version) < _READS_GCS_FROM else '')
        raise base.DataError(f'{self.root}: cannot open the {self.split} shards ({e}).{hint}') from e
      if len(reader) != self.num_records:
        raise base.DataError(f'{self.root}: the {self.split} shards hold {len(reader)} records but '
                             f'dataset.json says {self.num_records}; re-pack or re-copy the folder')
      self._reader = reader
    return self._reader

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_reader'], state['_lock'] = None, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self.num_records

  def record(self, index: int) -> dict[str, Any]:
    """The raw fields of record `index` (encoded bytes)."""
    return decode_record(self._records()[int(index)], f'{self.root}/{self.split}[{index}]')

  def __getitem__(self, index: int) -> dict:
    """Returns {'image': uint8 (H, W, 3), 'label': uint8 (H, W), 'name': the source image path}."""
    fields = self.record(index)
    where = f'{self.root}/{self.split}[{index}] ({fields["name"]})'
    image = files.decode_bytes(fields['image'], f'{where} image', 're-pack the dataset')
    image = files.rgb_array(image)
    label = np.asarray(files.decode_bytes(fields['label'], f'{where} label', 're-pack the dataset'), np.uint8)
    if image.shape[:2] != label.shape or label.shape != (fields['height'], fields['width']):
      raise base.DataError(f'{where}: image {image.shape[:2]}, label {label.shape} and recorded size '
                           f'{(fields["height"], fields["width"])} disagree; re-pack the dataset')
    label = self._label_map.apply(label, where, self.info)
    return {'image': image, 'label': label, 'name': fields['name']}

  def sample_name(self, index: int) -> str:
    return f'{self.root}/{self.split}[{index}]'

  def sample_size(self, index: int) -> tuple[int, int]:
    """The (h, w) recorded with sample `index` (not decoded)."""
    fields = self.record(index)
    return int(fields['height']), int(fields['width'])

  def __repr__(self) -> str:
    return f'PackedSource(root={self.root!r}, split={self.split!r}, num_samples={len(self)})'
