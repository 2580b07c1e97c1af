"""Writers of tiny dataset trees in each official on-disk layout, with known raw label values.

Each writer returns {split: [(image path, label path, raw label array)]} so tests can compare what a reader
returns with the expected training ids.
"""
from __future__ import annotations

import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

# cityscapesScripts' labels.py, trainId by raw id 0..33 (255 = ignored): written out, not derived from ours.
CITYSCAPES_TRAIN_ID = [255] * 7 + [0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                   15, 255, 255, 16, 17, 18]


def _image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _label(rng: np.random.Generator, height: int, width: int, values) -> np.ndarray:
  """A label of 4x4 blocks drawn from `values` (blocks survive nearest resizing and cropping recognisably)."""
  blocks = rng.choice(np.asarray(values, np.uint8), size=(-(-height // 4), -(-width // 4)))
  return np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)[:height, :width]


def _write(image_path: pathlib.Path, label_path: pathlib.Path, image: np.ndarray, label: np.ndarray) -> None:
  image_path.parent.mkdir(parents=True, exist_ok=True)
  label_path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(image_path, **({'quality': 95} if image_path.suffix == '.jpg' else {}))
  Image.fromarray(label).save(label_path)


def cityscapes(root: pathlib.Path, *, seed: int = 0, size=(16, 32), raw_ids_only=('val',)) -> dict:
  """leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine: labelTrainIds, or only labelIds for `raw_ids_only`."""
  rng, written = np.random.default_rng(seed), {}
  for split, cities in (('train', ('aachen', 'bonn')), ('val', ('lindau',))):
    written[split] = []
    for city in cities:
      for frame in range(2):
        name = f'{city}_{frame:06d}_000019'
        image_path = root / 'leftImg8bit' / split / city / f'{name}_leftImg8bit.png'
        if split in raw_ids_only:
          raw = _label(rng, *size, list(range(34)) + [255])
          label_path = root / 'gtFine' / split / city / f'{name}_gtFine_labelIds.png'
        else:
          raw = _label(rng, *size, list(range(19)) + [255])
          label_path = root / 'gtFine' / split / city / f'{name}_gtFine_labelTrainIds.png'
        _write(image_path, label_path, _image(rng, *size), raw)
        written[split].append((image_path, label_path, raw))
  return written


def _png_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def cityscapes_zips(manual_dir: pathlib.Path, *, seed: int = 0, size=(24, 32), bad_test_value: int | None = None
                    ) -> dict:
  """The two zips TFDS prepares `cityscapes/semantic_segmentation` from, as distributed (leftImg8bit/<split>/<city>/
  *_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png, raw ids 0..33 and 255), for 4 train, 2 val
  and 1 test image; `bad_test_value` is written into the test label's first pixel.

  Returns {split: {image id: (uint8 (H, W, 3) image, uint8 (H, W) raw label ids)}}.
  """
  rng, written = np.random.default_rng(seed), {}
  manual_dir.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(manual_dir / 'leftImg8bit_trainvaltest.zip', 'w') as images, \
       zipfile.ZipFile(manual_dir / 'gtFine_trainvaltest.zip', 'w') as labels:
    for split, cities, count in (('train', ('aachen', 'bonn'), 2), ('val', ('lindau',), 2), ('test', ('berlin',), 1)):
      written[split] = {}
      for city in cities:
        for frame in range(count):
          image_id = f'{city}_{frame:06d}_000019'
          image, raw = _image(rng, *size), _label(rng, *size, list(range(34)) + [255])
          if split == 'test' and bad_test_value is not None:
            raw[0, 0] = bad_test_value
          images.writestr(f'leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png', _png_bytes(image))
          labels.writestr(f'gtFine/{split}/{city}/{image_id}_gtFine_labelIds.png', _png_bytes(raw))
          written[split][image_id] = (image, raw)
  return written


def ade20k(root: pathlib.Path, *, seed: int = 0, size=(24, 20)) -> dict:
  """images/{training,validation}/*.jpg + annotations/.../*.png with raw values 0..150."""
  rng, written = np.random.default_rng(seed), {}
  for split, folder, count in (('train', 'training', 3), ('val', 'validation', 2)):
    written[split] = []
    for index in range(count):
      name = f'ADE_{folder[:5]}_{index:08d}'
      image_path = root / 'images' / folder / f'{name}.jpg'
      label_path = root / 'annotations' / folder / f'{name}.png'
      raw = _label(rng, *size, range(151))
      _write(image_path, label_path, _image(rng, *size), raw)
      written[split].append((image_path, label_path, raw))
  return written


def pascal_context(root: pathlib.Path, *, seed: int = 0, size=(20, 28)) -> dict:
  """VOC2010 JPEGImages + SegmentationClassContext (raw 0..59) + ImageSets/SegmentationContext lists."""
  rng, written = np.random.default_rng(seed), {}
  lists = root / 'ImageSets' / 'SegmentationContext'
  lists.mkdir(parents=True)
  for split, ids in (('train', ('2008_000002', '2008_000007', '2009_000013')), ('val', ('2008_000019',
                                                                                          '2010_000001'))):
    written[split] = []
    for image_id in ids:
      image_path = root / 'JPEGImages' / f'{image_id}.jpg'
      label_path = root / 'SegmentationClassContext' / f'{image_id}.png'
      raw = _label(rng, *size, range(60))
      _write(image_path, label_path, _image(rng, *size), raw)
      written[split].append((image_path, label_path, raw))
    (lists / f'{split}.txt').write_text(''.join(f'{i}\n' for i in ids))
  return written


def coco_stuff164k(root: pathlib.Path, *, seed: int = 0, size=(16, 20)) -> dict:
  """images/{train2017,val2017}/*.jpg; train labels as mmseg's *_labelTrainIds.png, val as raw stuffthingmaps."""
  rng, written = np.random.default_rng(seed), {}
  unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
  for split, folder in (('train', 'train2017'), ('val', 'val2017')):
    written[split] = []
    for index in range(2):
      name = f'{index + 139:012d}'
      image_path = root / 'images' / folder / f'{name}.jpg'
      if split == 'train':
        raw = _label(rng, *size, list(range(171)) + [255])
        label_path = root / 'annotations' / folder / f'{name}_labelTrainIds.png'
      else:
        raw = _label(rng, *size, [v for v in range(182) if v not in unused] + [255])
        label_path = root / 'annotations' / folder / f'{name}.png'
      _write(image_path, label_path, _image(rng, *size), raw)
      written[split].append((image_path, label_path, raw))
  return written


def coco_stuff10k(root: pathlib.Path, *, seed: int = 0, size=(16, 20)) -> dict:
  """images/{train2014,test2014}/*.jpg + annotations/.../*_labelTrainIds.png with 0 = unlabeled, 1..171."""
  rng, written = np.random.default_rng(seed), {}
  for split, folder in (('train', 'train2014'), ('test', 'test2014')):
    written[split] = []
    for index in range(2):
      name = f'COCO_{folder}_{index:012d}'
      image_path = root / 'images' / folder / f'{name}.jpg'
      label_path = root / 'annotations' / folder / f'{name}_labelTrainIds.png'
      raw = _label(rng, *size, range(172))
      _write(image_path, label_path, _image(rng, *size), raw)
      written[split].append((image_path, label_path, raw))
  return written


def camvid(root: pathlib.Path, *, seed: int = 0, size=(12, 16)) -> dict:
  """SegNet layout {train,val,test}/*.png + {train,val,test}annot/*.png with 0..10 classes and 11 void."""
  rng, written = np.random.default_rng(seed), {}
  for split in ('train', 'val', 'test'):
    written[split] = []
    for index in range(2):
      name = f'0001TP_{index:06d}'
      image_path, label_path = root / split / f'{name}.png', root / f'{split}annot' / f'{name}.png'
      raw = _label(rng, *size, range(12))
      _write(image_path, label_path, _image(rng, *size), raw)
      written[split].append((image_path, label_path, raw))
  return written


def cifar10_batches(root: pathlib.Path, *, seed: int = 0, records: int = 3) -> dict:
  """cifar-10-batches-bin/ under `root`: data_batch_1..5.bin and test_batch.bin of `records` records each, written
  byte by byte as the format describes (a label byte, then the red, green and blue 32x32 planes), and
  batches.meta.txt. Returns {'train': [(image uint8 (32, 32, 3), label)], 'test': [...]}, in file order."""
  rng, written = np.random.default_rng(seed), {'train': [], 'test': []}
  folder = root / 'cifar-10-batches-bin'
  folder.mkdir(parents=True, exist_ok=True)
  names = [('train', f'data_batch_{i}.bin') for i in range(1, 6)] + [('test', 'test_batch.bin')]
  for split, name in names:
    data = bytearray()
    for _ in range(records):
      image, label = _image(rng, 32, 32), int(rng.integers(10))
      data.append(label)
      for channel in range(3):
        data += image[:, :, channel].tobytes()
      written[split].append((image, label))
    (folder / name).write_bytes(bytes(data))
  (folder / 'batches.meta.txt').write_text('\n'.join(('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                                                      'horse', 'ship', 'truck')) + '\n\n')
  return written
