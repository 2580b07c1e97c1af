"""Readers: a split read by index in graph, sample index -> (image uint8 (H, W, 3), label uint8 (H, W) training
ids, name).

  * file datasets (`FilePairSource`: every on-disk dataset and `folder`): files read with tf.io.read_file (local
    or gs://) and decoded in graph (`decode`).
  * `packed`: records fetched by index through tf.numpy_function, decoded in graph.
  * `cityscapes_tfds`: TFDS `cityscapes/semantic_segmentation`, prepared from the two zips in data.root (its
    manual_dir) as ArrayRecord files and read by index (`as_data_source`, images left encoded by SkipDecoding,
    decoded in graph); its raw labelIds are mapped 34 -> 19 with `cityscapes.raw_label_map()`.
  * any other source (synthetic_context, ...): `source[i]` through tf.numpy_function.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from ctxseg_jax.data import datasets
from ctxseg_jax.data.datasets import cityscapes
from ctxseg_jax.data.datasets import files
from ctxseg_jax.data.datasets import packed
from ctxseg_jax.data.datasets.base import DataError, DatasetInfo
from ctxseg_jax.data.tfdata import checks
from ctxseg_jax.data.tfdata import decode


class Reader:
  """A split, read by index in graph."""
  info: DatasetInfo
  num_samples: int
  source: Any = None  # the Python source that decodes the same samples, when there is one

  def load(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """int64 scalar -> (image uint8 (H, W, 3), label uint8 (H, W) training ids, name: scalar string)."""
    raise NotImplementedError

  def sample_name(self, index: int) -> str:
    return self.source.sample_name(index)

  def explain(self, index: int) -> str | None:
    """Why sample `index` cannot be read (decoded on its own, outside the pipeline), or None when it can."""
    if self.source is not None:
      try:
        self.source[index]
      except DataError as e:
        return str(e)
      except Exception as e:  # pylint: disable=broad-except
        return f'{self.sample_name(index)}: {type(e).__name__}: {e}'
    try:
      self.load(tf.constant(index, tf.int64))
    except tf.errors.OpError as e:
      message = checks.marked(e.message)
      return message if message is not None else f'{self.sample_name(index)}: {e.message.strip()}'
    return None

  def batch_error(self, error: tf.errors.OpError, indices: np.ndarray) -> DataError:
    """The DataError for a batch of samples `indices` that failed with `error`: a graph check's own message, else
    the first sample whose separate (Python, then TF) decoding fails, else the batch's sample names with
    TensorFlow's message."""
    message = checks.marked(error.message)
    if message is not None:
      return DataError(message)
    for index in dict.fromkeys(int(i) for i in indices):
      problem = self.explain(index)
      if problem:
        return DataError(problem)
    names = ', '.join(self.sample_name(int(i)) for i in indices[:8])
    return DataError(f'the tf.data loader failed on a batch holding {names}: {error.message.strip()}')


class _FileReader(Reader):
  """A FilePairSource: files read and decoded in graph."""

  def __init__(self, source: files.FilePairSource):
    self.source, self.info, self.num_samples = source, source.info, len(source)
    names = sorted(source.label_maps)
    self.maps = decode.LabelMaps.of([source.label_maps[name] for name in names], source.info)
    self.images = tf.constant([pair.image for pair in source.pairs] or [''])
    self.labels = tf.constant([pair.label for pair in source.pairs] or [''])
    self.map_ids = tf.constant([names.index(pair.label_map) for pair in source.pairs] or [0], tf.int32)

  def load(self, index):
    image_path, label_path = tf.gather(self.images, index), tf.gather(self.labels, index)
    image, label = decode.decode_pair(tf.io.read_file(image_path), tf.io.read_file(label_path), image_path, label_path,
                                self.maps, tf.gather(self.map_ids, index))
    return image, label, image_path

  def sample_name(self, index):
    return self.source.pairs[index].image


class _PackedReader(Reader):
  """A PackedSource: records fetched by index in Python, decoded in graph."""

  def __init__(self, source: packed.PackedSource):
    self.source, self.info, self.num_samples = source, source.info, len(source)
    self.maps = decode.LabelMaps.of([files.identity_map(self.info.num_classes, self.info.ignore_index)], self.info)
    if len(source):
      source.record(0)  # opens the reader here rather than concurrently in the pipeline's threads

  def _fetch(self, index):
    fields = self.source.record(int(index))
    where = f'{self.source.root}/{self.source.split}[{int(index)}] ({fields["name"]})'
    return (np.array(fields['image'], object), np.array(fields['label'], object), np.array(where.encode(), object),
            np.int32(fields['height']), np.int32(fields['width']))

  def load(self, index):
    fetched = tf.numpy_function(self._fetch, [index], [tf.string, tf.string, tf.string, tf.int32, tf.int32])
    image_data, label_data, where, height, width = [tf.ensure_shape(t, []) for t in fetched]
    image, label = decode.decode_pair(image_data, label_data, where, where, self.maps, 0)

    def message():
      return tf.strings.join([where, ': decoded size ', checks.as_string(tf.shape(label)[0]), 'x',
                              checks.as_string(tf.shape(label)[1]), ' (HxW) disagrees with the recorded ',
                              checks.as_string(height), 'x', checks.as_string(width), '; re-pack the dataset'])

    recorded = tf.reduce_all(tf.equal(tf.shape(label), tf.stack([height, width])))
    with tf.control_dependencies([checks.check(recorded, message)]):
      return tf.identity(image), tf.identity(label), where


class _PythonReader(Reader):
  """Any other source: `source[i]` through tf.numpy_function (decoded and mapped in Python)."""

  def __init__(self, source):
    self.source, self.info, self.num_samples = source, source.info, len(source)

  def _fetch(self, index):
    sample = self.source[int(index)]
    name = sample.get('name') or self.source.sample_name(int(index))
    return sample['image'], sample['label'], np.array(str(name).encode(), object)

  def load(self, index):
    image, label, name = tf.numpy_function(self._fetch, [index], [tf.uint8, tf.uint8, tf.string])
    return tf.ensure_shape(image, [None, None, 3]), tf.ensure_shape(label, [None, None]), tf.ensure_shape(name, [])


TFDS_NAME = 'cityscapes/semantic_segmentation'
TFDS_ZIPS = ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip')
TFDS_SPLITS = {'train': 'train', 'val': 'validation', 'validation': 'validation', 'test': 'test'}


def _tfds_split(split: str) -> str:
  if split not in TFDS_SPLITS:
    raise DataError(f'cityscapes_tfds has no split {split!r}; its splits are {sorted(TFDS_SPLITS)} (check '
                    '--config.data.train_split and --config.data.eval_split)')
  return TFDS_SPLITS[split]


def _check_manual_dir(root: str, data_dir: str) -> None:
  from etils import epath
  missing = [name for name in TFDS_ZIPS if not (root and (epath.Path(root) / name).exists())]
  if missing:
    raise DataError(
        f'data.name=cityscapes_tfds: TFDS has not prepared {TFDS_NAME} in {data_dir} yet, and it builds it from '
        f'{" and ".join(TFDS_ZIPS)}, which must be in config.data.root (its manual_dir; now {root or "empty"!r}): '
        f'{", ".join(missing)} not found. Download them from https://www.cityscapes-dataset.com/downloads/ (free '
        'registration) and set --config.data.root to their folder; --config.data.tfds_data_dir chooses where '
        'the prepared dataset goes.')


def _tfds_builder(data_config: ml_collections.ConfigDict) -> Any:
  """The TFDS builder of cityscapes_tfds, prepared first (as ArrayRecord, from the zips in data.root) when it is
  not yet."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(TFDS_NAME, data_dir=data_config.tfds_data_dir or None)
  if not builder.is_prepared():
    _check_manual_dir(data_config.root, builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_config.root, try_download_gcs=False),
        file_format='array_record')
  return builder


def _tfds_records(builder: Any, tfds_split: str) -> Any:
  """The split's records read by index (ArrayRecord data source), images and labels left encoded."""
  import tensorflow_datasets as tfds
  decoders = {'image_left': tfds.decode.SkipDecoding(), 'segmentation_label': tfds.decode.SkipDecoding()}
  try:
    return builder.as_data_source(split=tfds_split, decoders=decoders)
  except NotImplementedError as e:
    raise DataError(
        f'{builder.data_dir} holds {TFDS_NAME} as {builder.info.file_format} files, but the tfdata loader reads '
        'TFDS by index, which needs ArrayRecord files. Add them once with\n  tfds convert_format '
        f'--dataset_version_dir={builder.data_dir} --out_file_format=array_record\nor point '
        '--config.data.tfds_data_dir at an empty folder to prepare the dataset again.') from e


class _TfdsReader(Reader):
  """TFDS Cityscapes, prepared as ArrayRecord and read by index; raw labelIds mapped to the 19 train ids."""

  def __init__(self, data_config: ml_collections.ConfigDict, split: str):
    tfds_split = _tfds_split(split)
    self.split, self.info = split, cityscapes.CITYSCAPES_INFO
    self.records = _tfds_records(_tfds_builder(data_config), tfds_split)
    self.num_samples = len(self.records)
    self.maps = decode.LabelMaps.of([cityscapes.raw_label_map(self.info.ignore_index)], self.info)

  def sample_name(self, index):
    return f'cityscapes_tfds/{self.split}[{index}]'

  def _fetch(self, index):
    example = self.records[int(index)]
    image_id = np.asarray(example['image_id']).item()
    image_id = image_id.decode(errors='replace') if isinstance(image_id, bytes) else str(image_id)
    where = f'{self.sample_name(int(index))} ({image_id})'
    return (np.array(example['image_left'], object), np.array(example['segmentation_label'], object),
            np.array(where.encode(), object))

  def load(self, index):
    fetched = tf.numpy_function(self._fetch, [index], [tf.string, tf.string, tf.string])
    image_data, label_data, where = [tf.ensure_shape(t, []) for t in fetched]
    image, label = decode.decode_pair(image_data, label_data, where, where, self.maps, 0)
    return image, label, where


def build(data_config: ml_collections.ConfigDict, split: str, source=None) -> Reader:
  """The reader of `split`: over `source` when given, else over the dataset config.data names."""
  if source is None and data_config.name == 'cityscapes_tfds':
    return _TfdsReader(data_config, split)
  source = datasets.build_source(data_config, split) if source is None else source
  if isinstance(source, files.FilePairSource):
    return _FileReader(source)
  if isinstance(source, packed.PackedSource):
    return _PackedReader(source)
  return _PythonReader(source)


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  """The number of samples in `split` as the readers see it (decodes nothing).

  cityscapes_tfds: the TFDS builder's split info (the dataset is prepared first when it is not yet), else the
  length of the split's ArrayRecord data source; any other dataset: len(datasets.build_source(...)).
  """
  if data_config.name != 'cityscapes_tfds':
    return len(datasets.build_source(data_config, split))
  tfds_split = _tfds_split(split)
  builder = _tfds_builder(data_config)
  splits = builder.info.splits
  if tfds_split in splits and splits[tfds_split].num_examples:
    return splits[tfds_split].num_examples
  return len(_tfds_records(builder, tfds_split))
