"""Cityscapes fine annotations: the 19 evaluation classes (train ids).

Class names and palette are mmseg's `CityscapesDataset`. Labels are the `*_gtFine_labelTrainIds.png` files
(train ids 0..18, 255 ignore) that cityscapesScripts' createTrainIdLabelImgs or mmseg's
tools/dataset_converters/cityscapes.py write next to the raw label ids.
The reader is not in this version: `build_source` explains the expected layout.
"""
from __future__ import annotations

import ml_collections

from ctxseg_jax.data.datasets import base

CLASS_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
    'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle')

PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))

CITYSCAPES_INFO = base.DatasetInfo(name='cityscapes', class_names=CLASS_NAMES, palette=PALETTE)

NUM_IMAGES = {'train': 2975, 'val': 500}

ROOT_EXAMPLE = '/data/cityscapes'
LAYOUT = """\
  <root>/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
  <root>/gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png   train ids 0..18, 255 ignore
  (2975 train / 500 val images, 2048x1024)"""


def build_source(data_config: ml_collections.ConfigDict, split: str) -> base.SegmentationSource:
  raise base.reader_unavailable('cityscapes', data_config.root, LAYOUT, ROOT_EXAMPLE)
