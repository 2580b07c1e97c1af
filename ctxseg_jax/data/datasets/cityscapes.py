"""Cityscapes fine annotations: the 19 evaluation classes (train ids).

Class names and palette are mmseg's `CityscapesDataset`. Labels are the `*_gtFine_labelTrainIds.png` files
(train ids 0..18, 255 ignore) that cityscapesScripts' createTrainIdLabelImgs or mmseg's
tools/dataset_converters/cityscapes.py write next to the raw label ids; where an image has only the raw
`*_gtFine_labelIds.png`, its 34 ids are mapped to the 19 train ids on the fly (HRNet's mapping), so the
conversion step is optional.
"""
from __future__ import annotations

import ml_collections

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import files

CLASS_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
    'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle')

PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))

CITYSCAPES_INFO = base.DatasetInfo(name='cityscapes', class_names=CLASS_NAMES, palette=PALETTE)

NUM_IMAGES = {'train': 2975, 'val': 500, 'test': 1525}

# Raw label id -> train id for the 19 evaluated classes (cityscapesScripts' labels.py); every other id of
# 0..33, and 255 (the license plate's id -1 stored in 8 bits), is ignored.
RAW_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                   26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

# Train id -> raw label id (cityscapesScripts' labelIds), the test server's format: 0..18 -> 7, 8, 11, ..., 33.
TRAIN_TO_RAW_ID = tuple(raw for raw, _ in sorted(RAW_TO_TRAIN_ID.items(), key=lambda item: item[1]))


def raw_label_map(ignore_index: int = 255) -> files.LabelMap:
  """The `*_labelIds.png` map: raw ids 0..33 and 255 -> train ids 0..18 or ignore."""
  mapping = {raw: RAW_TO_TRAIN_ID.get(raw, ignore_index) for raw in list(range(34)) + [255]}
  return files.LabelMap.from_dict(mapping, '0..33 (raw label ids) and 255')


ROOT_EXAMPLE = '/data/cityscapes'
LAYOUT = """\
  <root>/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
  <root>/gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png   train ids 0..18, 255 ignore
      (or only <name>_gtFine_labelIds.png: the 34 raw ids are mapped to the 19 train ids while reading)
  (2975 train / 500 val images, 2048x1024)"""
PREPARE = """\
Prepare it: download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com and
unzip both into data.root. (Or leave them zipped: data.name=cityscapes_tfds has TFDS prepare them once.)"""

_SPLITS = {'train': 'train', 'val': 'val', 'test': 'test'}


def build_source(data_config: ml_collections.ConfigDict, split: str) -> files.FilePairSource:
  root = files.dataset_root(data_config, 'cityscapes', ROOT_EXAMPLE, LAYOUT, PREPARE)
  folder = files.resolve_split('cityscapes', split, _SPLITS)
  image_dir, label_dir = root / 'leftImg8bit' / folder, root / 'gtFine' / folder
  files.require_split_folders(split, image_dir, label_dir, LAYOUT, PREPARE)
  pairs, problems = files.pair_folders(
      image_dir, label_dir, image_suffix='_leftImg8bit.png', in_subfolders=True,
      label_suffixes={'_gtFine_labelTrainIds.png': 'train_ids', '_gtFine_labelIds.png': 'raw_ids'})
  label_maps = {'train_ids': files.identity_map(19, CITYSCAPES_INFO.ignore_index),
                'raw_ids': raw_label_map(CITYSCAPES_INFO.ignore_index)}
  return files.FilePairSource(CITYSCAPES_INFO, split, pairs, label_maps, problems=problems,
                              expected_size=NUM_IMAGES[folder], root=str(root))
