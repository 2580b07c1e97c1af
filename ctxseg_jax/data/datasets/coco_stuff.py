"""COCO-Stuff, 171 classes (80 things + 91 stuff): the 164k release (COCO 2017 images) and the 10k release.

Class names and palette are mmseg's `COCOStuffDataset`.

- coco_stuff164k: labels are mmseg's `<id>_labelTrainIds.png` (0..170, 255 ignore) from
  tools/dataset_converters/coco_stuff164k.py; an image with only the raw stuffthingmaps `<id>.png` (ids 0..181,
  of which 11 are unused, 255 unlabeled) is mapped to the 171 training ids while reading. Train labels come from
  annotations/train2017 (mmseg's base config points them at annotations/val2017 by mistake).
- coco_stuff10k: labels are mmseg's `<id>_labelTrainIds.png` from tools/dataset_converters/coco_stuff10k.py,
  where 0 is unlabeled and 1..171 are the classes (so 0 is ignored and the rest shifted, as mmseg's
  reduce_zero_label does). Its splits are train (9000) and test (1000, the evaluation split; 'val' is an alias).
"""
from __future__ import annotations

import ml_collections

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import files

CLASS_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush', 'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush', 'cabinet',
    'cage', 'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes', 'clouds', 'counter',
    'cupboard', 'curtain', 'desk-stuff', 'dirt', 'door-stuff', 'fence', 'floor-marble', 'floor-other',
    'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog', 'food-other', 'fruit', 'furniture-other', 'grass',
    'gravel', 'ground-other', 'hill', 'house', 'leaves', 'light', 'mat', 'metal', 'mirror-stuff', 'moss',
    'mountain', 'mud', 'napkin', 'net', 'paper', 'pavement', 'pillow', 'plant-other', 'plastic', 'platform',
    'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof', 'rug', 'salad', 'sand', 'sea', 'shelf',
    'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs', 'stone', 'straw', 'structural-other', 'table',
    'tent', 'textile-other', 'towel', 'tree', 'vegetable', 'wall-brick', 'wall-concrete', 'wall-other',
    'wall-panel', 'wall-stone', 'wall-tile', 'wall-wood', 'water-other', 'waterdrops', 'window-blind',
    'window-other', 'wood')

PALETTE = (
    (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224), (0, 192, 192),
    (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224), (0, 0, 64), (0, 160, 192),
    (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224), (0, 0, 192), (128, 160, 192), (128, 128, 0),
    (128, 0, 32), (128, 32, 0), (128, 0, 128), (64, 128, 32), (0, 160, 0), (0, 0, 0), (192, 128, 160), (0, 32, 0),
    (0, 128, 128), (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32), (128, 96, 128), (0, 0, 128),
    (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128), (128, 128, 128), (64, 0, 160),
    (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0), (128, 0, 192), (0, 128, 32), (64, 224, 0),
    (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192), (0, 128, 160), (192, 224, 0), (0, 128, 64),
    (128, 128, 32), (192, 32, 128), (0, 64, 192), (0, 0, 32), (64, 160, 128), (128, 64, 64), (128, 0, 160),
    (64, 32, 128), (128, 192, 192), (0, 0, 160), (192, 160, 128), (128, 192, 0), (128, 0, 96), (192, 32, 0),
    (128, 64, 128), (64, 128, 96), (64, 160, 0), (0, 64, 0), (192, 128, 224), (64, 32, 0), (0, 192, 128),
    (64, 128, 224), (192, 160, 0), (0, 192, 0), (192, 128, 96), (192, 96, 128), (0, 64, 128), (64, 0, 96),
    (64, 224, 128), (128, 64, 0), (192, 0, 224), (64, 96, 128), (128, 192, 128), (64, 0, 224), (192, 224, 128),
    (128, 192, 64), (192, 0, 96), (192, 96, 0), (128, 64, 192), (0, 128, 96), (0, 224, 0), (64, 64, 64),
    (128, 128, 224), (0, 96, 0), (64, 192, 192), (0, 128, 224), (128, 224, 0), (64, 192, 64), (128, 128, 96),
    (128, 32, 128), (64, 0, 192), (0, 64, 96), (0, 160, 128), (192, 0, 64), (128, 64, 224), (0, 32, 128),
    (192, 128, 192), (0, 64, 224), (128, 160, 128), (192, 128, 0), (128, 64, 32), (128, 32, 64), (192, 0, 128),
    (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160), (0, 32, 64), (64, 128, 128), (64, 192, 160),
    (128, 160, 64), (64, 128, 0), (192, 192, 32), (128, 96, 192), (64, 0, 128), (64, 64, 32), (0, 224, 192),
    (192, 0, 0), (192, 64, 160), (0, 96, 192), (192, 128, 128), (64, 64, 160), (128, 224, 192), (192, 128, 64),
    (192, 64, 32), (128, 96, 64), (192, 0, 192), (0, 192, 32), (64, 224, 64), (64, 0, 64), (128, 192, 160),
    (64, 96, 64), (64, 128, 192), (0, 192, 160), (192, 224, 64), (64, 128, 64), (128, 192, 32), (192, 32, 192),
    (64, 64, 192), (0, 64, 32), (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192), (192, 192, 192),
    (0, 64, 160), (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128), (64, 192, 96),
    (64, 160, 64), (64, 64, 0))

COCO_STUFF_164K_INFO = base.DatasetInfo(name='coco_stuff164k', class_names=CLASS_NAMES, palette=PALETTE)
COCO_STUFF_10K_INFO = base.DatasetInfo(name='coco_stuff10k', class_names=CLASS_NAMES, palette=PALETTE)

NUM_IMAGES_164K = {'train2017': 118287, 'val2017': 5000}
NUM_IMAGES_10K = {'train2014': 9000, 'test2014': 1000}

# The stuffthingmaps ids (0..181) that no annotation uses; the remaining 171 are ranked to 0..170.
UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

ROOT_EXAMPLE_164K = '/data/coco_stuff164k'
LAYOUT_164K = """\
  <root>/images/{train2017,val2017}/<id>.jpg
  <root>/annotations/{train2017,val2017}/<id>_labelTrainIds.png   0..170, 255 ignore (mmseg's converter)
      (or the raw stuffthingmaps <id>.png, ids 0..181: mapped to 0..170 while reading)
  (118287 train / 5000 val images)"""
PREPARE_164K = """\
Prepare it: download train2017.zip and val2017.zip (cocodataset.org) into images/, and
stuffthingmaps_trainval2017.zip (github.com/nightrome/cocostuff) into annotations/."""

ROOT_EXAMPLE_10K = '/data/coco_stuff10k'
LAYOUT_10K = """\
  <root>/images/{train2014,test2014}/<id>.jpg
  <root>/annotations/{train2014,test2014}/<id>_labelTrainIds.png   0 = unlabeled (ignored), 1..171 = classes
  (9000 train / 1000 test images)"""
PREPARE_10K = """\
Prepare it: download cocostuff-10k-v1.1.zip (github.com/nightrome/cocostuff10k) and convert it with mmseg's
tools/dataset_converters/coco_stuff10k.py, which writes this layout."""


def raw_label_map(ignore_index: int = 255) -> files.LabelMap:
  """stuffthingmaps ids (0..181 without the unused ones, 255 unlabeled) -> training ids 0..170 by rank."""
  used = [raw for raw in range(182) if raw not in UNUSED_RAW_IDS]
  mapping = {raw: train_id for train_id, raw in enumerate(used)}
  mapping[255] = ignore_index
  return files.LabelMap.from_dict(mapping, '0..181 without the unused ids ' + str(UNUSED_RAW_IDS) + ', and 255')


def _source(info: base.DatasetInfo, data_config: ml_collections.ConfigDict, split: str, *, root_example: str,
            layout: str, prepare: str, split_folders: dict[str, str], sizes: dict[str, int],
            label_suffixes: dict[str, str], label_maps: dict[str, files.LabelMap]) -> files.FilePairSource:
  root = files.dataset_root(data_config, info.name, root_example, layout, prepare)
  folder = files.resolve_split(info.name, split, split_folders)
  image_dir, label_dir = root / 'images' / folder, root / 'annotations' / folder
  files.require_split_folders(split, image_dir, label_dir, layout, prepare)
  pairs, problems = files.pair_folders(image_dir, label_dir, image_suffix='.jpg', label_suffixes=label_suffixes)
  return files.FilePairSource(info, split, pairs, label_maps, problems=problems, expected_size=sizes[folder],
                              root=str(root))


def build_source_164k(data_config: ml_collections.ConfigDict, split: str) -> files.FilePairSource:
  info = COCO_STUFF_164K_INFO
  return _source(
      info, data_config, split, root_example=ROOT_EXAMPLE_164K, layout=LAYOUT_164K, prepare=PREPARE_164K,
      split_folders={'train': 'train2017', 'val': 'val2017', 'train2017': 'train2017', 'val2017': 'val2017'},
      sizes=NUM_IMAGES_164K, label_suffixes={'_labelTrainIds.png': 'train_ids', '.png': 'raw_ids'},
      label_maps={'train_ids': files.identity_map(info.num_classes, info.ignore_index),
                  'raw_ids': raw_label_map(info.ignore_index)})


def build_source_10k(data_config: ml_collections.ConfigDict, split: str) -> files.FilePairSource:
  info = COCO_STUFF_10K_INFO
  return _source(
      info, data_config, split, root_example=ROOT_EXAMPLE_10K, layout=LAYOUT_10K, prepare=PREPARE_10K,
      split_folders={'train': 'train2014', 'test': 'test2014', 'val': 'test2014', 'train2014': 'train2014',
                     'test2014': 'test2014'},
      sizes=NUM_IMAGES_10K, label_suffixes={'_labelTrainIds.png': 'reduce_zero'},
      label_maps={'reduce_zero': files.reduce_zero_map(info.num_classes, info.ignore_index)})
