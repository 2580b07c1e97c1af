"""data.name='cityscapes_tfds': TFDS `cityscapes/semantic_segmentation`, read by index like any other source.

TFDS prepares the dataset once, from the two zips in its manual_dir (`config.data.root`), as ArrayRecord files
under `config.data.tfds_data_dir` ('' = TFDS's default, ~/tensorflow_datasets). Preparing needs TensorFlow (TFDS's
Cityscapes builder lists the zips' contents with tf.io.gfile); reading does not: `tfds.data_source` gives each
record with its images left encoded (SkipDecoding), and `__getitem__` decodes them like the files of
data.name=cityscapes and maps the 34 raw label ids to the 19 train ids with `cityscapes.raw_label_map()`.
Both come with `pip install -e '.[tfds]'`.

The splits are 'train', 'val' (TFDS 'validation', also accepted by that name) and 'test'; records are in the
order TFDS wrote them, which is fixed once the dataset is prepared.
"""
from __future__ import annotations

from typing import Any

from etils import epath
import ml_collections

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import cityscapes
from ctxseg_jax.data.datasets import files
from ctxseg_jax.data.datasets import tfds_records

TFDS_NAME = 'cityscapes/semantic_segmentation'
ZIPS = ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip')
# config split -> TFDS split
SPLITS = {'train': 'train', 'val': 'validation', 'validation': 'validation', 'test': 'test'}
_OFFICIAL_SIZE = {'train': cityscapes.NUM_IMAGES['train'], 'validation': cityscapes.NUM_IMAGES['val'],
                  'test': cityscapes.NUM_IMAGES['test']}

def _missing_zips_error(root: str, prepared_dir: str) -> base.DataError | None:
  """The error for a manual_dir without the zips TFDS prepares the dataset from, or None when both are there."""
  missing = [name for name in ZIPS if not (root and (epath.Path(root) / name).exists())]
  if not missing:
    return None
  where = f'{root}: ' if root else 'config.data.root is empty; '
  return base.DataError(
      f'{where}{" and ".join(missing)} not found. data.name=cityscapes_tfds has not been prepared in '
      f'{prepared_dir} yet, and TFDS prepares it from {" and ".join(ZIPS)} in config.data.root (its manual_dir). '
      'Download them from https://www.cityscapes-dataset.com/downloads/ (free registration) and set '
      '--config.data.root to their folder; --config.data.tfds_data_dir chooses where the prepared dataset goes. '
      '(To read the unzipped files instead: --config.data.name=cityscapes.)')


def _data_source(data_config: ml_collections.ConfigDict, tfds_split: str) -> tuple[Any, str]:
  """(the split's records by index, images left encoded; the prepared dataset's folder). Prepares the dataset
  first when it is not yet."""
  tfds = tfds_records.import_tfds('cityscapes_tfds',
                                  'tensorflow-datasets, and tensorflow-cpu to prepare it from the zips')
  builder = tfds.builder(TFDS_NAME, data_dir=data_config.tfds_data_dir or None)
  data_dir, prepared_dir = str(builder.data_dir_root), str(builder.data_dir)  # TFDS's default resolved, if ''
  builder_kwargs, prepared = {}, builder.is_prepared()
  if not prepared:
    error = _missing_zips_error(data_config.root, prepared_dir)
    if error is not None:
      raise error
    # A prepared dataset keeps the format it was written in (asking for another one is an error).
    builder_kwargs['file_format'] = 'array_record'
  records = tfds_records.open_records(
      tfds, 'cityscapes_tfds', TFDS_NAME, tfds_split, data_dir=data_dir, prepared_dir=prepared_dir,
      task='read' if prepared else f'prepare it from the zips in {data_config.root}, which needs TensorFlow',
      decoders={'image_left': tfds.decode.SkipDecoding(), 'segmentation_label': tfds.decode.SkipDecoding()},
      builder_kwargs=builder_kwargs,
      download_and_prepare_kwargs={'download_config': tfds.download.DownloadConfig(
          manual_dir=data_config.root or None, try_download_gcs=False)})
  return records, prepared_dir


class CityscapesTfdsSource:
  """One split of TFDS Cityscapes: a grain random-access source of decoded samples with train ids.

  Attributes:
    info: cityscapes.CITYSCAPES_INFO (19 classes).
    split: the split as configured ('train', 'val', 'validation' or 'test').
    tfds_split: the TFDS split it reads.
    prepared_dir: the folder of the prepared dataset (<tfds_data_dir>/cityscapes/semantic_segmentation/<version>).
    notes: a split size that differs from the official one (a subset, or files missing from the zips).
  """

  def __init__(self, data_config: ml_collections.ConfigDict, split: str):
    self.info, self.split = cityscapes.CITYSCAPES_INFO, split
    self.tfds_split = files.resolve_split('cityscapes_tfds', split, SPLITS)
    self._records, self.prepared_dir = _data_source(data_config, self.tfds_split)
    self._label_map = cityscapes.raw_label_map(self.info.ignore_index)
    self.notes: list[str] = []
    official = _OFFICIAL_SIZE[self.tfds_split]
    if len(self) != official:
      self.notes.append(f'cityscapes_tfds/{split} in {self.prepared_dir}: {len(self)} records, the official split '
                        f'has {official}. Fine for a subset; otherwise the zips were incomplete.')

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    """Returns {'image': uint8 (H, W, 3), 'label': uint8 (H, W) train ids, 'name': the Cityscapes image id
    (e.g. 'aachen_000000_000019')}."""
    record = self._records[int(index)]
    image_id = tfds_records.text(record['image_id'])
    where = f'{self.sample_name(index)} ({image_id})'
    fix = f'the prepared dataset is damaged: delete {self.prepared_dir} to prepare it again from the zips'
    image = files.rgb_array(files.decode_bytes(record['image_left'], f'{where} image_left', fix))
    raw = files.label_values(files.decode_bytes(record['segmentation_label'], f'{where} segmentation_label', fix),
                             where)
    if image.shape[:2] != raw.shape:
      raise base.DataError(f'{where}: image is {image.shape[1]}x{image.shape[0]} (WxH) but its label is '
                           f'{raw.shape[1]}x{raw.shape[0]}; {fix}')
    return {'image': image, 'label': self._label_map.apply(raw, where, self.info), 'name': image_id}

  def sample_size(self, index: int) -> tuple[int, int]:
    """The (h, w) of sample `index`, from its encoded image's header."""
    return files.header_size(self.sample_name(index), self._records[int(index)]['image_left'])

  def encoded_image(self, index: int) -> bytes:
    """The image's PNG bytes as TFDS stored them (for packing without re-encoding)."""
    return bytes(self._records[int(index)]['image_left'])

  def sample_name(self, index: int) -> str:
    return f'{self.prepared_dir}/{self.tfds_split}[{index}]'

  def __repr__(self) -> str:
    return (f'CityscapesTfdsSource(split={self.split!r}, prepared_dir={self.prepared_dir!r}, '
            f'num_samples={len(self)})')

