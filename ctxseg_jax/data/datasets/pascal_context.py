"""PASCAL-Context (VOC2010 images, Detail API labels): 59 classes (background ignored) or 60 (with background).

Class names and palette are mmseg's `PascalContextDataset59` / `PascalContextDataset` (the alphabetical order of
the 60 Detail category ids that mmseg's converter maps, by rank, to 0..59; PyTorch-Encoding and HRNet use the
same mapping). The 59-class version drops background (label 0 becomes ignore, 1..59 become 0..58), which is
the convention of PyTorch-Encoding's published numbers; the two conventions differ by about 6 mIoU.
Labels are the PNGs of mmseg's converter (raw ids 0..59, 0 = background); write them from the annotation file
`trainval_merged.json` with `python -m ctxseg_jax.data.convert_pascal_context` (no Detail API needed).
"""
from __future__ import annotations

from etils import epath
import ml_collections

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import files

CLASS_NAMES_59 = (
    'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle', 'building',
    'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain', 'dog',
    'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike',
    'mountain', 'mouse', 'person', 'plate', 'platform', 'pottedplant', 'road', 'rock', 'sheep', 'shelves',
    'sidewalk', 'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'tvmonitor', 'wall',
    'water', 'window', 'wood')

PALETTE_59 = (
    (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140), (204, 5, 255),
    (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250),
    (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92),
    (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20), (255, 8, 41),
    (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0),
    (0, 235, 255), (0, 173, 255), (31, 0, 255))

PASCAL_CONTEXT_59_INFO = base.DatasetInfo(name='pascal_context_59', class_names=CLASS_NAMES_59,
                                          palette=PALETTE_59)
PASCAL_CONTEXT_60_INFO = base.DatasetInfo(name='pascal_context_60', class_names=('background',) + CLASS_NAMES_59,
                                          palette=((120, 120, 120),) + PALETTE_59)

NUM_IMAGES = {'train': 4998, 'val': 5105}

ROOT_EXAMPLE = '/data/VOCdevkit/VOC2010'
LAYOUT = """\
  <root>/JPEGImages/<id>.jpg                               (root = VOCdevkit/VOC2010)
  <root>/SegmentationClassContext/<id>.png                 60 ids, 0 = background
  <root>/ImageSets/SegmentationContext/{train,val}.txt     4998 train / 5105 val ids
  pascal_context_59 maps label 0 to ignore and 1..59 to 0..58; pascal_context_60 keeps 0..59."""
PREPARE = """\
Prepare it: download VOC2010 (VOCtrainval_03-May-2010.tar) and trainval_merged.json, then run
  python -m ctxseg_jax.data.convert_pascal_context --json trainval_merged.json --root <root>
which writes SegmentationClassContext/ and the ImageSets/SegmentationContext/ lists."""

_SPLITS = ('train', 'val')


def _label_maps(info: base.DatasetInfo) -> dict[str, files.LabelMap]:
  if info.num_classes == 59:
    return {'context': files.reduce_zero_map(59, info.ignore_index)}
  mapping = {i: i for i in range(60)}
  mapping[255] = info.ignore_index
  return {'context': files.LabelMap.from_dict(mapping, '0..59 and 255 (ignored)')}


def _source(info: base.DatasetInfo, data_config: ml_collections.ConfigDict, split: str) -> files.FilePairSource:
  if not data_config.root:
    raise base.DataError(f'config.data.root is empty; data.name={info.name} reads PASCAL-Context from disk: set '
                         f'--config.data.root={ROOT_EXAMPLE} (local or gs://), laid out as\n{LAYOUT}\n{PREPARE}')
  root = epath.Path(data_config.root)
  if split not in _SPLITS:
    raise base.DataError(f'{info.name} has no split {split!r}; its splits are {list(_SPLITS)} (check '
                         '--config.data.train_split and --config.data.eval_split)')
  list_file = root / 'ImageSets' / 'SegmentationContext' / f'{split}.txt'
  for folder, what in ((root, 'the dataset root'), (root / 'JPEGImages', 'the VOC2010 images'),
                       (root / 'SegmentationClassContext', 'the label PNGs')):
    if not folder.is_dir():
      raise files.missing_folder_error(folder, what, LAYOUT, PREPARE)
  if not list_file.exists():
    raise files.missing_folder_error(list_file, f'the list of {split} image ids', LAYOUT, PREPARE)
  ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
  images = files.files_with_suffix(root / 'JPEGImages', ('.jpg',))
  labels = files.files_with_suffix(root / 'SegmentationClassContext', ('.png',))
  pairs, problems = [], []
  for image_id in ids:
    image, label = images.get(image_id + '.jpg'), labels.get(image_id + '.png')
    if image is None:
      problems.append(f'{list_file} lists {image_id} but {root / "JPEGImages" / (image_id + ".jpg")} is missing')
    elif label is None:
      problems.append(f'{image} has no label: expected {root / "SegmentationClassContext" / (image_id + ".png")} '
                      '(re-run the converter, or remove the id from the list)')
    else:
      pairs.append(files.Pair(image, label, 'context'))
  return files.FilePairSource(info, split, pairs, _label_maps(info), problems=problems,
                              expected_size=NUM_IMAGES[split], root=str(root))


def build_source_59(data_config: ml_collections.ConfigDict, split: str) -> files.FilePairSource:
  return _source(PASCAL_CONTEXT_59_INFO, data_config, split)


def build_source_60(data_config: ml_collections.ConfigDict, split: str) -> files.FilePairSource:
  return _source(PASCAL_CONTEXT_60_INFO, data_config, split)
