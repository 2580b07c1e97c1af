"""data.name='cityscapes_tfds': TFDS prepares Cityscapes from (tiny) zips in its manual_dir; the source reads it by
index with the raw ids mapped 34 -> 19, through the grain pipeline, training with exact resume, evaluation,
--mode check_data and packing; its errors name the folder and the fix."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from ctxseg_jax import experiment, train
from ctxseg_jax.check_data import check_data
from ctxseg_jax.checkpoints import Checkpointer
from ctxseg_jax.data import datasets, pack, pipeline
from ctxseg_jax.data.datasets import cityscapes_tfds
from tests import layouts
from tests.tiny_config import get_config

TRAIN_IDS = np.full(256, 255, np.uint8)
TRAIN_IDS[:34] = layouts.CITYSCAPES_TRAIN_ID
BAD_TEST_VALUE = 40
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run as a program: hides TensorFlow as on a machine without it, reads split 'val' of the dataset prepared in
# argv[3] and tries to prepare it in the empty argv[4] from the zips in argv[2].
WITHOUT_TENSORFLOW = """
import json, sys

class Hidden:
  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'tensorflow':
      return None
    return self.finder.find_spec(name, path, target) if hasattr(self.finder, 'find_spec') else None

  def __getattr__(self, name):
    return getattr(self.finder, name)

sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
from ctxseg_jax.data import datasets
from tests.tiny_config import get_config
config = get_config()
config.data.name, config.data.root, config.data.tfds_data_dir = 'cityscapes_tfds', sys.argv[2], sys.argv[3]
source = datasets.build_source(config.data, 'val')
names = [source[i]['name'] for i in range(len(source))]
config.data.tfds_data_dir = sys.argv[4]
try:
  datasets.build_source(config.data, 'val')
  error = None
except datasets.DataError as e:
  error = str(e)
print(json.dumps({'names': names, 'error': error, 'tensorflow': 'tensorflow' in sys.modules}))
"""


def _config(manual_dir, tfds_data_dir):
  config = get_config()
  config.data.name = 'cityscapes_tfds'
  config.data.root, config.data.tfds_data_dir = str(manual_dir), str(tfds_data_dir)
  config.train.batch_size = config.eval.batch_size = 2
  return config


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(config reading the prepared dataset, what the zips hold); TFDS prepares it on the first source built."""
  root = tmp_path_factory.mktemp('cityscapes_tfds')
  written = layouts.cityscapes_zips(root / 'manual', bad_test_value=BAD_TEST_VALUE)
  config = _config(root / 'manual', root / 'tfds')
  datasets.build_source(config.data, 'train')
  return config, written


def _samples_by_id(source):
  return {sample['name']: sample for sample in (source[i] for i in range(len(source)))}


def test_every_split_reads_the_zipped_images_with_train_ids(prepared):
  config, written = prepared
  for split in ('train', 'val'):
    source = datasets.build_source(config.data, split)
    assert len(source) == len(written[split])
    assert source.prepared_dir.endswith('cityscapes/semantic_segmentation/1.0.0')
    assert any(f'{len(written[split])} records, the official split has' in note for note in source.notes)
    samples = _samples_by_id(source)
    assert samples.keys() == written[split].keys()
    for image_id, (image, raw) in written[split].items():
      np.testing.assert_array_equal(samples[image_id]['image'], image)
      np.testing.assert_array_equal(samples[image_id]['label'], TRAIN_IDS[raw])
      assert datasets.check_sample(samples[image_id], source.info, image_id) == []
  val, validation = (datasets.build_source(config.data, split) for split in ('val', 'validation'))
  assert validation.tfds_split == val.tfds_split == 'validation'
  assert [validation[i]['name'] for i in range(2)] == [val[i]['name'] for i in range(2)]
  assert len(datasets.build_source(config.data, 'test')) == 1
  with pytest.raises(datasets.DataError, match=r"cityscapes_tfds has no split 'dev'.*'test', 'train', 'val'"):
    datasets.build_source(config.data, 'dev')


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_grain_stream_in_worker_processes_and_from_a_pickled_source_resumes_exactly(prepared):
  """grain pickles the source into its worker processes; the stream and its saved state carry over."""
  config, _ = prepared
  source = datasets.build_source(config.data, 'train')
  iterator = pipeline.train_iterator(source, config.data, 2, seed=1, process_index=0, process_count=1)
  first = [next(iterator) for _ in range(3)]
  in_worker = pipeline.train_iterator(source, config.data, 2, seed=1, process_index=0, process_count=1,
                                      worker_count=1)
  _assert_batches_equal(first, [next(in_worker) for _ in range(3)])
  pipeline.close(in_worker)
  assert first[0]['image'].shape == (2, 32, 32, 3) and first[0]['label'].shape == (2, 32, 32)
  assert set(np.unique(np.stack([b['label'] for b in first])).tolist()) <= set(range(19)) | {255}
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  copy = pickle.loads(pickle.dumps(source))
  resumed = pipeline.train_iterator(copy, config.data, 2, seed=1, process_index=0, process_count=1)
  resumed.set_state(state)
  _assert_batches_equal(expected, [next(resumed) for _ in range(3)])


def test_training_resumes_exactly_and_evaluates(prepared, tmp_path, monkeypatch):
  config, _ = prepared
  config = config.copy_and_resolve_references()
  config.train.steps, config.train.checkpoint_every, config.train.log_every = 4, 2, 2
  results_a = train.train(config, tmp_path / 'a', devices=jax.devices()[:1])
  monkeypatch.setattr(train._Preemption, 'reached', lambda self, checkpointer, step: step == 2)
  assert train.train(config, tmp_path / 'b', devices=jax.devices()[:1]) == {}
  monkeypatch.undo()
  results_b = train.train(config, tmp_path / 'b', devices=jax.devices()[:1])
  states = []
  for workdir in (tmp_path / 'a', tmp_path / 'b'):
    checkpointer = Checkpointer(workdir, create=False)
    states.append(checkpointer.restore(experiment.build(config, jax.devices()[:1]).abstract_state()))
    checkpointer.close()
  assert states[0][0] == states[1][0] == 4
  for a, b in zip(jax.tree.leaves(states[0][1]), jax.tree.leaves(states[1][1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert results_a.keys() == results_b.keys() and {'miou', 'iou/road', 'iou/bicycle'} <= results_a.keys()
  np.testing.assert_array_equal([results_a[k] for k in results_a], [results_b[k] for k in results_a])  # nan: absent


def test_check_data_names_the_record_with_a_bad_raw_id(prepared, capsys):
  config, _ = prepared
  config = config.copy_and_resolve_references()
  config.data.eval_split = 'test'
  problems = check_data(config)
  source = datasets.build_source(config.data, 'test')
  assert len(problems) == 1
  assert f'{source.sample_name(0)} (berlin_000000_000019)' in problems[0]
  assert f'label values [{BAD_TEST_VALUE}] are not valid raw labels of cityscapes' in problems[0]
  assert 'Class frequencies in cityscapes/train' in capsys.readouterr().out


def test_packing_keeps_the_stored_pngs_and_the_samples(prepared, tmp_path):
  config, _ = prepared
  pack.pack(config, str(tmp_path), ['val'], records_per_shard=1, workers=1)
  packed_config = config.copy_and_resolve_references()
  packed_config.data.name, packed_config.data.root = 'packed', str(tmp_path)
  original, packed = (datasets.build_source(c.data, 'val') for c in (config, packed_config))
  assert len(packed) == len(original) == 2
  for index in range(len(original)):
    a, b = original[index], packed[index]
    assert a['name'] == b['name']
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
    assert packed.record(index)['image'] == original.encoded_image(index)  # the PNG TFDS stored, not re-encoded


def test_missing_zips_name_the_folder_and_the_fix(tmp_path):
  config = _config(tmp_path / 'manual', tmp_path / 'tfds')
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / cityscapes_tfds.ZIPS[0]).write_bytes(b'')
  with pytest.raises(datasets.DataError) as error:
    datasets.build_source(config.data, 'train')
  message = str(error.value)
  assert message.startswith(f'{tmp_path / "manual"}: {cityscapes_tfds.ZIPS[1]} not found')
  assert str(tmp_path / 'tfds') in message and 'cityscapes-dataset.com' in message
  assert '--config.data.root' in message and '--config.data.tfds_data_dir' in message
  config.data.root = ''
  with pytest.raises(datasets.DataError, match=f'config.data.root is empty; {cityscapes_tfds.ZIPS[0]} and'):
    datasets.build_source(config.data, 'train')


def test_a_dataset_prepared_as_tfrecord_names_the_conversion(tmp_path):
  import tensorflow_datasets as tfds
  layouts.cityscapes_zips(tmp_path / 'manual')
  builder = tfds.builder(cityscapes_tfds.TFDS_NAME, data_dir=str(tmp_path / 'tfds'), file_format='tfrecord')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual')))
  config = _config(tmp_path / 'manual', tmp_path / 'tfds')
  with pytest.raises(datasets.DataError, match='another file format') as error:
    datasets.build_source(config.data, 'val')
  assert (f'tfds convert_format --dataset_version_dir={builder.data_dir} --out_file_format=array_record'
          in str(error.value))


def test_without_tfds_the_error_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(datasets.DataError, match=r"TFDS, which is not installed: pip install -e '\.\[tfds\]'"):
    datasets.build_source(_config(tmp_path, tmp_path).data, 'train')


def test_reading_needs_no_tensorflow_but_preparing_does(prepared, tmp_path):
  config, written = prepared
  result = subprocess.run(
      [sys.executable, '-c', WITHOUT_TENSORFLOW, REPO, config.data.root, config.data.tfds_data_dir,
       str(tmp_path / 'empty')], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS=''))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert not report['tensorflow'] and sorted(report['names']) == sorted(written['val'])
  assert "lacks the module 'tensorflow' to prepare it from the zips" in report['error']
  assert str(tmp_path / 'empty') in report['error'] and "pip install -e '.[tfds]'" in report['error']
