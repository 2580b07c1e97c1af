"""Tests for the dataset sources, the registry, the folder layout and the exporter."""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from ctxseg_jax import config as config_lib
from ctxseg_jax.data import datasets
from ctxseg_jax.data import export
from ctxseg_jax.data.datasets import synthetic_context as sc

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 64


def _source(split='train', n=8, seed=0, size=SIZE):
  return datasets.SyntheticContextSource(split, n, image_size=size, seed=seed)


def _data_config(**overrides):
  config = config_lib.base_config()
  for key, value in overrides.items():
    node = config.data
    *parents, last = key.split('.')
    for p in parents:
      node = node[p]
    node[last] = value
  return config.data


# --- synthetic_context ---------------------------------------------------------------------------------------

def test_synthetic_sample_format_and_name():
  source = _source()
  sample = source[3]
  assert sample['image'].dtype == np.uint8 and sample['image'].shape == (SIZE, SIZE, 3)
  assert sample['label'].dtype == np.uint8 and sample['label'].shape == (SIZE, SIZE)
  assert sample['name'] == source.sample_name(3) == 'synthetic_context/train/3'
  assert datasets.check_sample(sample, source.info, sample['name']) == []
  assert len(source) == 8
  with pytest.raises(IndexError):
    source[8]


def test_synthetic_is_deterministic():
  a, b = _source(), _source()
  for index in (0, 5):
    first, again, fresh = a[index], a[index], b[index]
    np.testing.assert_array_equal(first['image'], again['image'])
    np.testing.assert_array_equal(first['image'], fresh['image'])
    np.testing.assert_array_equal(first['label'], fresh['label'])
  assert not np.array_equal(a[0]['image'], a[1]['image'])
  assert not np.array_equal(a[0]['image'], _source(split='val')[0]['image'])
  assert not np.array_equal(a[0]['image'], _source(seed=1)[0]['image'])


def test_synthetic_classes_ignore_and_scene_rule():
  source = _source(n=100)
  counts = np.zeros(256, np.int64)
  for i in range(len(source)):
    label = source[i]['label']
    present = set(np.unique(label).tolist())
    counts += np.bincount(label.ravel(), minlength=256)
    # Exactly one band, and paired objects always take the class of that band's scene.
    sea = {sc.WATER, sc.BOAT, sc.BUOY}
    city = {sc.ROAD, sc.CAR, sc.SIGN}
    assert (sc.WATER in present) != (sc.ROAD in present)
    assert not (present & sea and present & city), f'sample {i} mixes scenes: {present}'
    assert present <= set(range(8)) | {255}
  assert all(counts[c] > 0 for c in range(8)), counts[:8]
  assert counts[255] > 0


@pytest.mark.parametrize('pair', [(sc.BOAT, sc.CAR), (sc.BUOY, sc.SIGN)])
def test_paired_objects_render_identically(pair):
  for state in range(20):
    first, second = (sc.render_object(c, np.random.default_rng(state), 96) for c in pair)
    np.testing.assert_array_equal(first.rgb, second.rgb)
    np.testing.assert_array_equal(first.mask, second.mask)
  person = sc.render_object(sc.PERSON, np.random.default_rng(0), 96)
  vehicle = sc.render_object(pair[0], np.random.default_rng(0), 96)
  assert person.mask.shape != vehicle.mask.shape or not np.array_equal(person.rgb, vehicle.rgb)


def test_scene_changes_only_band_and_paired_classes():
  key = (0, sc.split_code('train'), 7)
  sea_image, sea_label, _ = sc.render_sample(key, SIZE, scene='sea')
  city_image, city_label, _ = sc.render_sample(key, SIZE, scene='city')
  mapping = np.arange(256, dtype=np.uint8)
  mapping[[sc.WATER, sc.BOAT, sc.BUOY]] = [sc.ROAD, sc.CAR, sc.SIGN]
  np.testing.assert_array_equal(mapping[sea_label], city_label)
  same = (sea_label != sc.WATER) & (sea_label != 255)
  np.testing.assert_array_equal(sea_image[same], city_image[same])
  assert not np.array_equal(sea_image, city_image)


def test_synthetic_source_pickles():
  source = _source()
  clone = pickle.loads(pickle.dumps(source))
  assert len(clone) == len(source) and clone.split == source.split
  np.testing.assert_array_equal(clone[2]['image'], source[2]['image'])


def test_synthetic_rejects_bad_arguments():
  with pytest.raises(datasets.DataError, match='image_size'):
    _source(size=8)
  with pytest.raises(datasets.DataError, match='seed'):
    _source(seed=-1)


# --- registry ------------------------------------------------------------------------------------------------

def test_registry_synthetic_splits():
  data = _data_config(**{'synthetic.num_train': 5, 'synthetic.num_val': 3, 'synthetic.image_size': 48})
  assert datasets.dataset_info(data) == datasets.SYNTHETIC_CONTEXT_INFO
  assert len(datasets.build_source(data, 'train')) == 5
  assert len(datasets.build_source(data, 'val')) == 3
  assert datasets.build_source(data, 'val')[0]['image'].shape == (48, 48, 3)
  with pytest.raises(datasets.DataError, match=r"'test'.*\['train', 'val'\]"):
    datasets.build_source(data, 'test')
  config = config_lib.base_config()
  config_lib.validate(config, known_datasets=datasets.DATASETS)


def test_registry_folder_needs_root():
  data = _data_config(name='folder')
  with pytest.raises(datasets.DataError, match=r'--config\.data\.root='):
    datasets.dataset_info(data)
  with pytest.raises(datasets.DataError, match=r'--config\.data\.root='):
    datasets.build_source(data, 'train')


@pytest.mark.parametrize('name, num_classes, first, last', [
    ('pascal_context_59', 59, 'aeroplane', 'wood'),
    ('pascal_context_60', 60, 'background', 'wood'),
    ('ade20k', 150, 'wall', 'flag'),
    ('cityscapes', 19, 'road', 'bicycle'),
])
def test_registered_datasets_have_metadata_without_data(name, num_classes, first, last):
  info = datasets.dataset_info(_data_config(name=name))  # no root, no files: --mode summary needs only this
  assert info.name == name and info.num_classes == num_classes and info.ignore_index == 255
  assert (info.class_names[0], info.class_names[-1]) == (first, last)
  assert len(info.palette) == num_classes
  assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in info.palette)
  assert len(set(info.class_names)) == num_classes


def test_dataset_metadata_spot_checks():
  pc59 = datasets.pascal_context.PASCAL_CONTEXT_59_INFO
  pc60 = datasets.pascal_context.PASCAL_CONTEXT_60_INFO
  assert pc60.class_names[1:] == pc59.class_names and pc60.palette[1:] == pc59.palette
  assert list(pc59.class_names) == sorted(pc59.class_names)  # the Detail ids' alphabetical rank order
  assert pc59.palette[0] == (180, 120, 120) and pc60.palette[0] == (120, 120, 120)
  ade = datasets.ade20k.ADE20K_INFO
  assert ade.class_names[7] == 'bed ' and ade.class_names[8] == 'windowpane'  # mmseg's spelling, kept
  assert ade.palette[149] == (92, 0, 255)
  cityscapes = datasets.cityscapes.CITYSCAPES_INFO
  assert cityscapes.class_names[6:8] == ('traffic light', 'traffic sign')
  assert cityscapes.palette[0] == (128, 64, 128) and cityscapes.palette[-1] == (119, 11, 32)


@pytest.mark.parametrize('name, layout_fragment', [
    ('pascal_context_59', 'SegmentationClassContext'),
    ('pascal_context_60', 'ImageSets/SegmentationContext'),
    ('ade20k', 'annotations/{training,validation}'),
    ('cityscapes', '_gtFine_labelTrainIds.png'),
    ('coco_stuff164k', 'annotations/{train2017,val2017}'),
    ('coco_stuff10k', 'annotations/{train2014,test2014}'),
    ('camvid', 'trainannot'),
])
def test_disk_datasets_explain_a_missing_root_or_layout(name, layout_fragment, tmp_path):
  with pytest.raises(datasets.DataError, match=r'config\.data\.root is empty.*--config\.data\.root=') as error:
    datasets.build_source(_data_config(name=name), 'train')
  assert layout_fragment in str(error.value) and 'Prepare it' in str(error.value)
  with pytest.raises(datasets.DataError, match='is missing') as error:
    datasets.build_source(_data_config(name=name, root=str(tmp_path)), 'train')
  assert layout_fragment in str(error.value) and str(tmp_path) in str(error.value)
  assert 'Prepare it' in str(error.value)


# --- folder layout -------------------------------------------------------------------------------------------

@pytest.fixture
def exported(tmp_path):
  root = tmp_path / 'ds'
  sources = {'train': _source(n=3), 'val': _source(split='val', n=2)}
  for split, source in sources.items():
    assert export.export_split(source, root, split) == len(source)
  export.write_dataset_json(datasets.SYNTHETIC_CONTEXT_INFO, root)
  return root, sources


def test_folder_round_trip(exported):
  root, sources = exported
  assert datasets.folder_info(root) == datasets.SYNTHETIC_CONTEXT_INFO
  data = _data_config(name='folder', root=str(root))
  assert datasets.dataset_info(data) == datasets.SYNTHETIC_CONTEXT_INFO
  for split, source in sources.items():
    loaded = datasets.build_source(data, split)
    assert len(loaded) == len(source)
    for i in range(len(source)):
      want, got = source[i], loaded[i]
      np.testing.assert_array_equal(want['image'], got['image'])
      np.testing.assert_array_equal(want['label'], got['label'])
      assert got['name'] == loaded.sample_name(i) == str(root / 'images' / split / f'{i:06d}.png')
  assert Image.open(root / 'labels' / 'train' / '000000.png').mode == 'P'
  clone = pickle.loads(pickle.dumps(loaded))
  np.testing.assert_array_equal(clone[0]['label'], loaded[0]['label'])


def test_export_refuses_to_mix_with_existing_split(exported):
  root, sources = exported
  with pytest.raises(datasets.DataError, match='--overwrite'):
    export.export_split(sources['val'], root, 'train')
  export.export_split(sources['val'], root, 'train', overwrite=True)
  assert len(datasets.FolderSource(root, 'train')) == len(sources['val'])


def _truncate(path, keep=0.6):
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])


def _noise_image(shape=(SIZE, SIZE, 3)):
  return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def test_folder_truncated_png(exported):
  root, _ = exported
  path = root / 'images' / 'train' / '000001.png'
  Image.fromarray(_noise_image()).save(path)
  _truncate(path)
  source = datasets.FolderSource(root, 'train')  # listing alone does not decode
  with pytest.raises(datasets.DataError, match=re.escape(str(path))):
    source[1]


def test_folder_truncated_jpeg(exported):
  root, _ = exported
  (root / 'images' / 'train' / '000001.png').unlink()
  path = root / 'images' / 'train' / '000001.jpg'
  Image.fromarray(_noise_image()).save(path, quality=95)
  _truncate(path)
  source = datasets.FolderSource(root, 'train')
  with pytest.raises(datasets.DataError, match=re.escape(str(path))):
    source[1]


def test_folder_truncated_label(exported):
  root, _ = exported
  path = root / 'labels' / 'train' / '000002.png'
  Image.fromarray(_noise_image((SIZE, SIZE))).save(path)
  _truncate(path)
  with pytest.raises(datasets.DataError, match=re.escape(str(path))):
    datasets.FolderSource(root, 'train')[2]


def test_folder_image_without_label(exported):
  root, _ = exported
  (root / 'labels' / 'train' / '000001.png').unlink()
  (root / 'labels' / 'train' / '000002.png').unlink()
  with pytest.raises(datasets.DataError) as error:
    datasets.build_source(_data_config(name='folder', root=str(root)), 'train')
  for stem in ('000001', '000002'):  # every orphan is named, not just the first
    assert str(root / 'images' / 'train' / f'{stem}.png') in str(error.value)
    assert str(root / 'labels' / 'train' / f'{stem}.png') in str(error.value)
  source = datasets.FolderSource(root, 'train')  # lenient construction keeps the complete pairs
  assert len(source) == 1 and len(source.problems) == 2


def test_folder_label_without_image(exported):
  root, _ = exported
  (root / 'images' / 'train' / '000001.png').unlink()
  with pytest.raises(datasets.DataError, match=re.escape(str(root / 'labels' / 'train' / '000001.png'))):
    datasets.build_source(_data_config(name='folder', root=str(root)), 'train')


def test_folder_missing_root(tmp_path):
  root = tmp_path / 'nowhere'
  with pytest.raises(datasets.DataError, match=re.escape(str(root))) as error:
    datasets.FolderSource(root, 'train')
  assert 'python -m ctxseg_jax.data.export' in str(error.value)
  with pytest.raises(datasets.DataError, match=re.escape(str(root))):
    datasets.folder_info(root)


def test_folder_missing_split(exported):
  root, _ = exported
  with pytest.raises(datasets.DataError, match=re.escape(str(root / 'images' / 'test'))) as error:
    datasets.FolderSource(root, 'test')
  assert "['train', 'val']" in str(error.value)


def test_folder_three_channel_label(exported):
  root, _ = exported
  path = root / 'labels' / 'train' / '000000.png'
  Image.fromarray(_noise_image()).save(path)
  with pytest.raises(datasets.DataError, match=re.escape(str(path))) as error:
    datasets.FolderSource(root, 'train')[0]
  assert '3 channels' in str(error.value)


def test_folder_missing_dataset_json(exported):
  root, _ = exported
  (root / 'dataset.json').unlink()
  with pytest.raises(datasets.DataError, match=re.escape(str(root / 'dataset.json'))):
    datasets.FolderSource(root, 'train')


@pytest.mark.parametrize('content, problem', [
    ('{"name": "x", "class_names": ["a"]', 'not valid JSON'),
    ('{"name": "x", "class_names": ["a", "b"], "palette": [[0, 0, 0]]}', '2 class_names but 1 palette'),
    ('{"name": "x", "class_names": ["a"], "palette": [[0, 0, 0]], "ignore_indx": 255}', 'unknown keys'),
    ('{"name": "x", "class_names": ["a"], "palette": [[0, 0, 0]], "ignore_index": 0}', 'collides'),
])
def test_folder_invalid_dataset_json(exported, content, problem):
  root, _ = exported
  (root / 'dataset.json').write_text(content)
  with pytest.raises(datasets.DataError, match=re.escape(str(root / 'dataset.json'))) as error:
    datasets.folder_info(root)
  assert problem in str(error.value)


# --- check_sample --------------------------------------------------------------------------------------------

def test_check_sample_reports_bad_values_and_sizes():
  info = datasets.SYNTHETIC_CONTEXT_INFO
  image = np.zeros((4, 6, 3), np.uint8)
  label = np.zeros((4, 6), np.uint8)
  assert datasets.check_sample({'image': image, 'label': label}, info, 'a.png') == []
  label[0, 0] = 9
  problems = datasets.check_sample({'image': image, 'label': label}, info, 'a.png')
  assert len(problems) == 1 and problems[0].startswith('a.png:') and '[9]' in problems[0]
  problems = datasets.check_sample({'image': image, 'label': np.zeros((5, 6), np.uint8)}, info, 'b.png')
  assert len(problems) == 1 and problems[0].startswith('b.png:') and '6x4' in problems[0]
  problems = datasets.check_sample({'image': image, 'label': np.zeros((4, 6), np.int32)}, info, 'c.png')
  assert len(problems) == 1 and problems[0].startswith('c.png:') and 'uint8' in problems[0]


# --- export CLI ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_cli(tmp_path):
  config_file = tmp_path / 'tiny.py'
  config_file.write_text(
      'from ctxseg_jax import config\n\n\n'
      'def get_config():\n'
      '  c = config.base_config()\n'
      '  c.data.synthetic.num_train = 3\n'
      '  c.data.synthetic.num_val = 2\n'
      '  c.data.synthetic.image_size = 40\n'
      '  return c\n')
  out = tmp_path / 'out'
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
  result = subprocess.run([sys.executable, '-m', 'ctxseg_jax.data.export', f'--config={config_file}',
                           f'--out={out}', '--splits=train,val'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert json.loads((out / 'dataset.json').read_text())['class_names'] == list(sc.CLASS_NAMES)
  assert len(datasets.FolderSource(out, 'train')) == 3
  assert len(datasets.FolderSource(out, 'val')) == 2
  result = subprocess.run([sys.executable, '-m', 'ctxseg_jax.data.export', f'--config={config_file}',
                           f'--out={out}', '--splits=test'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode != 0 and "no split 'test'" in result.stderr
