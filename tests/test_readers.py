"""The on-disk dataset readers: every official layout, its label mapping, split handling and bad-input errors."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from ctxseg_jax import config as config_lib
from ctxseg_jax.data import datasets
from ctxseg_jax.data import pack
from ctxseg_jax.data.datasets import files
from tests import layouts

REPO = pathlib.Path(__file__).resolve().parents[1]
COCO_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def _reduce_zero(raw):
  return np.where(raw == 0, 255, raw.astype(np.int64) - 1).astype(np.uint8)


def _cityscapes_expected(raw, label_path):
  if str(label_path).endswith('_labelTrainIds.png'):
    return raw
  table = np.full(256, 255, np.uint8)
  table[:34] = layouts.CITYSCAPES_TRAIN_ID
  return table[raw]


def _coco164k_expected(raw, label_path):
  if str(label_path).endswith('_labelTrainIds.png'):
    return raw
  rank = raw.astype(np.int64) - np.searchsorted(np.asarray(COCO_UNUSED), raw, side='left')
  return np.where(raw == 255, 255, rank).astype(np.uint8)


CASES = {
    # name: (layout writer, splits, expected training ids from (raw, label path))
    'cityscapes': (layouts.cityscapes, ('train', 'val'), _cityscapes_expected),
    'ade20k': (layouts.ade20k, ('train', 'val'), lambda raw, _: _reduce_zero(raw)),
    'pascal_context_59': (layouts.pascal_context, ('train', 'val'), lambda raw, _: _reduce_zero(raw)),
    'pascal_context_60': (layouts.pascal_context, ('train', 'val'), lambda raw, _: raw),
    'coco_stuff164k': (layouts.coco_stuff164k, ('train', 'val'), _coco164k_expected),
    'coco_stuff10k': (layouts.coco_stuff10k, ('train', 'test'), lambda raw, _: _reduce_zero(raw)),
    'camvid': (layouts.camvid, ('train', 'val', 'test'), lambda raw, _: np.where(raw == 11, 255, raw)),
}


def _data_config(name, root):
  config = config_lib.base_config()
  config.data.name, config.data.root = name, str(root)
  return config.data


@pytest.mark.parametrize('name', sorted(CASES))
def test_reader_maps_every_official_layout(name, tmp_path):
  writer, splits, expected = CASES[name]
  written = writer(tmp_path)
  info = datasets.dataset_info(_data_config(name, tmp_path))
  for split in splits:
    source = datasets.build_source(_data_config(name, tmp_path), split)
    assert len(source) == len(written[split]) and source.problems == []
    assert any(str(len(written[split])) in note for note in source.notes)  # a subset of the official size
    by_image = {str(image): (label, raw) for image, label, raw in written[split]}
    for index in range(len(source)):
      sample = source[index]
      label_path, raw = by_image[sample['name']]
      assert source.label_path(index) == str(label_path)
      np.testing.assert_array_equal(sample['label'], expected(raw, label_path))
      assert sample['image'].shape == (*raw.shape, 3) and sample['image'].dtype == np.uint8
      assert datasets.check_sample(sample, info, sample['name']) == []


def test_cityscapes_prefers_train_ids_and_falls_back_to_raw_ids(tmp_path):
  written = layouts.cityscapes(tmp_path, raw_ids_only=())
  image, label, raw = written['train'][0]
  raw_ids = np.full_like(raw, 26)  # car
  Image.fromarray(raw_ids).save(str(label).replace('_labelTrainIds', '_labelIds'))
  source = datasets.build_source(_data_config('cityscapes', tmp_path), 'train')
  np.testing.assert_array_equal(source[0]['label'], raw)  # labelTrainIds wins when both exist
  label.unlink()
  source = datasets.build_source(_data_config('cityscapes', tmp_path), 'train')
  np.testing.assert_array_equal(source[0]['label'], np.full_like(raw, 13))


def test_split_aliases_and_unknown_split(tmp_path):
  layouts.ade20k(tmp_path)
  config = _data_config('ade20k', tmp_path)
  assert len(datasets.build_source(config, 'validation')) == len(datasets.build_source(config, 'val'))
  with pytest.raises(datasets.DataError, match=r"no split 'test'.*'train'.*'val'"):
    datasets.build_source(config, 'test')


def test_every_unpaired_file_is_named_and_training_refuses(tmp_path):
  written = layouts.ade20k(tmp_path)
  orphan_image = written['train'][0][0]
  missing_label = written['train'][0][1]
  missing_label.unlink()
  orphan_label = written['train'][1][1]
  written['train'][1][0].unlink()
  config = _data_config('ade20k', tmp_path)
  with pytest.raises(datasets.DataError) as error:
    datasets.build_source(config, 'train')
  message = str(error.value)
  assert f'{orphan_image} has no label: expected {missing_label}' in message
  assert str(orphan_label) in message and 'has no image' in message and '--mode check_data' in message
  lenient = datasets.build_source(config, 'train', strict=False)
  assert len(lenient) == 1 and len(lenient.problems) == 2


def test_pascal_context_list_entries_without_files(tmp_path):
  written = layouts.pascal_context(tmp_path)
  written['val'][0][1].unlink()
  written['val'][1][0].unlink()
  with pytest.raises(datasets.DataError) as error:
    datasets.build_source(_data_config('pascal_context_59', tmp_path), 'val')
  assert str(written['val'][0][1]) in str(error.value)  # the missing label's path
  assert '2010_000001' in str(error.value) and 'JPEGImages' in str(error.value)


def test_label_value_outside_the_classes_names_file_value_and_range(tmp_path):
  written = layouts.camvid(tmp_path)
  image, label, raw = written['train'][1]
  bad = raw.copy()
  bad[0, 0], bad[1, 1] = 12, 200
  Image.fromarray(bad).save(label)
  source = datasets.build_source(_data_config('camvid', tmp_path), 'train')
  with pytest.raises(datasets.DataError) as error:
    source[1]
  message = str(error.value)
  assert str(label) in message and '[12, 200]' in message and '0..10 and 11 (void)' in message


def test_image_and_label_of_different_sizes(tmp_path):
  written = layouts.cityscapes(tmp_path)
  image, label, raw = written['train'][0]
  Image.fromarray(raw[:8]).save(label)
  source = datasets.build_source(_data_config('cityscapes', tmp_path), 'train')
  with pytest.raises(datasets.DataError) as error:
    source[0]
  assert str(image) in str(error.value) and str(label) in str(error.value)
  assert '32x16' in str(error.value) and '32x8' in str(error.value)


def test_truncated_image_names_its_path(tmp_path):
  written = layouts.pascal_context(tmp_path)
  image = written['train'][2][0]
  image.write_bytes(image.read_bytes()[:300])
  source = datasets.build_source(_data_config('pascal_context_60', tmp_path), 'train')
  with pytest.raises(datasets.DataError, match=re.escape(str(image)) + '.*truncated'):
    source[2]


def test_label_maps_reject_what_they_do_not_know():
  pc59 = files.reduce_zero_map(59, 255)
  assert pc59.lut[0] == 255 and pc59.lut[1] == 0 and pc59.lut[59] == 58 and pc59.lut[255] == 255
  assert not pc59.valid[60] and not pc59.valid[254]
  cityscapes_raw = datasets.cityscapes.raw_label_map()
  np.testing.assert_array_equal(cityscapes_raw.lut[:34], layouts.CITYSCAPES_TRAIN_ID)
  assert cityscapes_raw.valid[:34].all() and cityscapes_raw.valid[255] and not cityscapes_raw.valid[34]
  coco_raw = datasets.coco_stuff.raw_label_map()
  assert coco_raw.valid.sum() == 172 and not coco_raw.valid[list(COCO_UNUSED)].any()
  assert sorted(coco_raw.lut[coco_raw.valid][:-1].tolist()) == list(range(171))


def test_packed_round_trip_keeps_image_bytes_and_mapped_labels(tmp_path):
  layouts.cityscapes(tmp_path / 'cityscapes')
  config = config_lib.base_config()
  config.data.name, config.data.root = 'cityscapes', str(tmp_path / 'cityscapes')
  pack.pack(config, str(tmp_path / 'packed'), ['train', 'val'], records_per_shard=3, workers=2)
  packed_config = _data_config('packed', tmp_path / 'packed')
  assert datasets.dataset_info(packed_config) == datasets.cityscapes.CITYSCAPES_INFO
  for split in ('train', 'val'):
    original = datasets.build_source(config.data, split)
    packed = datasets.build_source(packed_config, split)
    assert len(packed) == len(original) and len(packed.shards) == -(-len(original) // 3)
    for index in range(len(original)):
      a, b = original[index], packed[index]
      assert a['name'] == b['name']
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
      assert packed.record(index)['image'] == pathlib.Path(original.pairs[index].image).read_bytes()  # not re-encoded
  with pytest.raises(datasets.DataError, match="no split 'test'"):
    datasets.build_source(packed_config, 'test')
  with pytest.raises(datasets.DataError, match='exists; choose an empty --out'):
    pack.pack(config, str(tmp_path / 'packed'), ['train'])


def test_packed_dataset_errors_name_the_fix(tmp_path):
  with pytest.raises(datasets.DataError, match='config.data.root is empty'):
    datasets.build_source(_data_config('packed', ''), 'train')
  with pytest.raises(datasets.DataError, match='(?s)is not a packed dataset.*python -m ctxseg_jax.data.pack'):
    datasets.build_source(_data_config('packed', tmp_path), 'train')
  (tmp_path / 'dataset.json').write_text('{"name": "x", "class_names": ["a"], "palette": [[0, 0, 0]]}')
  with pytest.raises(datasets.DataError, match="re-pack the dataset with this version"):
    datasets.build_source(_data_config('packed', tmp_path), 'train')


@pytest.mark.slow
def test_pack_cli_writes_a_dataset_that_check_data_passes(tmp_path):
  layouts.camvid(tmp_path / 'camvid')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
             XLA_FLAGS='')
  base = [sys.executable, '-m', 'ctxseg_jax.data.pack', '--config=tests/tiny_config.py',
          '--config.data.name=camvid', f'--config.data.root={tmp_path / "camvid"}', f'--out={tmp_path / "p"}']
  result = subprocess.run(base + ['--splits=train,test', '--records_per_shard=1'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in (tmp_path / 'p').iterdir()) == [
      'dataset.json', 'test-00000-of-00002.array_record', 'test-00001-of-00002.array_record',
      'train-00000-of-00002.array_record', 'train-00001-of-00002.array_record']
  result = subprocess.run(base + ['--splits=train'], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and '--overwrite' in result.stderr
  result = subprocess.run(
      [sys.executable, '-m', 'ctxseg_jax.main', '--config=tests/tiny_config.py', '--mode=check_data',
       '--config.data.name=packed', f'--config.data.root={tmp_path / "p"}', '--config.data.eval_split=test'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Class frequencies in camvid/test' in result.stdout and 'No problems found.' in result.stdout


def test_folder_declared_ignore_value_is_read_as_255(tmp_path):
  (tmp_path / 'images' / 'train').mkdir(parents=True)
  (tmp_path / 'labels' / 'train').mkdir(parents=True)
  (tmp_path / 'dataset.json').write_text(
      '{"name": "x", "class_names": ["a", "b"], "palette": [[0, 0, 0], [9, 9, 9]], "ignore_index": 200}')
  Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / 'images' / 'train' / 'p.png')
  Image.fromarray(np.array([[0, 1, 200, 1, 0]] * 4, np.uint8)).save(tmp_path / 'labels' / 'train' / 'p.png')
  config = _data_config('folder', tmp_path)
  assert datasets.dataset_info(config).ignore_index == 255
  np.testing.assert_array_equal(datasets.build_source(config, 'train')[0]['label'][0], [0, 1, 255, 1, 0])
