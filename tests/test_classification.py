"""Image classification: the CIFAR-10 readers (binary batches, TFDS), the synthetic classification set, the CIFAR
augmentation, EncNet's CIFAR network and its Context Encoding Module, and the trainer's classification task (top-1
in the eval table and metrics.jsonl, exact resume, 1 device == 8 devices, checkpoint ranking)."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import config as config_lib
from ctxseg_jax import evaluate, experiment, models, parallel, reporting, summary, train
from ctxseg_jax.check_data import check_data
from ctxseg_jax.checkpoints import Checkpointer
from ctxseg_jax.config import base_config
from ctxseg_jax.data import datasets, pipeline, transforms
from ctxseg_jax.data.datasets import cifar10, cifar10_tfds, synthetic_classification
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.backbones.cifar_resnet import EncodingGate
from ctxseg_jax.models.heads import HEADS
from tests import layouts
from tests.shipped_configs import load
from tests.test_cli import ROOT, _env
from tests.test_param_counts import REFERENCES
from tests.tiny_config import tiny_classification_config


def _cifar_config(root, **data):
  config = load('configs/encnet_cifar10.py')
  config.data.root = str(root)
  for key, value in data.items():
    config.data[key] = value
  return config


# ------------------------------------------------------------------------------------------------- CIFAR-10 readers

@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('cifar')
  return root, layouts.cifar10_batches(root)


@pytest.mark.parametrize('folder', ['parent', 'batches'])
def test_binary_reader_decodes_every_record(cifar_root, folder):
  root, written = cifar_root
  config = _cifar_config(root if folder == 'parent' else root / cifar10.FOLDER)
  for split in ('train', 'test'):
    source = datasets.build_source(config.data, split)
    assert len(source) == len(written[split]) == (15 if split == 'train' else 3)
    assert any('3 records, the official file has 10000' in note for note in source.notes)
    for index, (image, label) in enumerate(written[split]):
      sample = source[index]
      np.testing.assert_array_equal(sample['image'], image)
      assert sample['label'] == label and sample['label'].dtype == np.int32 and sample['label'].shape == ()
      assert datasets.check_sample(sample, source.info, sample['name']) == []
    expected_file = 'data_batch_2.bin' if split == 'train' else 'test_batch.bin'
    assert source.sample_name(4 if split == 'train' else 1).endswith(f'{expected_file}[1]')
  copy = pickle.loads(pickle.dumps(datasets.build_source(config.data, 'test')))
  np.testing.assert_array_equal(copy[2]['image'], written['test'][2][0])
  with pytest.raises(datasets.DataError, match=r"cifar10 has no split 'val'; its splits are \['test', 'train'\]"):
    datasets.build_source(config.data, 'val')


def test_a_truncated_batch_is_named_by_check_data_and_refused_by_training(tmp_path, capsys):
  layouts.cifar10_batches(tmp_path)
  truncated = tmp_path / cifar10.FOLDER / 'data_batch_3.bin'
  truncated.write_bytes(truncated.read_bytes()[:-100])  # 2 whole records and 2973 bytes of the third
  config = _cifar_config(tmp_path)
  problems = check_data(config)
  assert len(problems) == 1
  assert problems[0].startswith(f'{truncated}: 9119 bytes is not a whole number of 3073-byte records (2 whole, '
                                '2973 bytes over)')
  assert 're-extract it from cifar-10-binary.tar.gz' in problems[0]
  out = capsys.readouterr().out
  assert 'Class frequencies in cifar10/train (14 images)' in out and 'ignore' not in out  # the whole records
  with pytest.raises(datasets.DataError, match='1 problem') as error:
    datasets.build_source(config.data, 'train')
  assert str(truncated) in str(error.value) and '--mode check_data' in str(error.value)


def test_reader_errors_name_the_file_and_the_fix(tmp_path):
  with pytest.raises(datasets.DataError, match='config.data.root is empty') as error:
    datasets.build_source(_cifar_config('').data, 'train')
  assert 'cifar-10-binary.tar.gz' in str(error.value) and 'data_batch_1.bin' in str(error.value)
  with pytest.raises(datasets.DataError, match=f'{tmp_path / "data_batch_1.bin"} is missing'):
    datasets.build_source(_cifar_config(tmp_path).data, 'train')
  layouts.cifar10_batches(tmp_path)
  batch = tmp_path / cifar10.FOLDER / 'test_batch.bin'
  data = bytearray(batch.read_bytes())
  data[cifar10.RECORD_BYTES] = 12  # the second record's label byte
  batch.write_bytes(bytes(data))
  source = datasets.build_source(_cifar_config(tmp_path).data, 'test')
  with pytest.raises(datasets.DataError, match=r'test_batch.bin\[1\]: label byte 12 is not a CIFAR-10 class id'):
    source[1]
  (tmp_path / cifar10.FOLDER / 'data_batch_5.bin').unlink()
  with pytest.raises(datasets.DataError, match=r'data_batch_5.bin: missing'):
    datasets.build_source(_cifar_config(tmp_path).data, 'train')


def test_tfds_cifar10_reads_what_tfds_prepared_from_the_binary_batches(cifar_root, tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  root, written = cifar_root
  config = _cifar_config(root, name='cifar10_tfds', tfds_data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(datasets.DataError, match='TFDS cifar10 is not prepared there') as error:
    datasets.build_source(config.data, 'train')
  assert f'tfds build cifar10 --data_dir={tmp_path / "tfds"} --file_format=array_record' in str(error.value)
  # TFDS's own cifar10 builder prepares the fixture, as it would the downloaded archive once extracted.
  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract', lambda self, url: str(root))
  tfds.builder('cifar10', data_dir=str(tmp_path / 'tfds'), file_format='array_record').download_and_prepare()
  monkeypatch.undo()
  for split in ('train', 'test'):
    source = datasets.build_source(config.data, split)
    assert isinstance(source, cifar10_tfds.Cifar10TfdsSource) and len(source) == len(written[split])
    samples = [source[i] for i in range(len(source))]
    assert all(datasets.check_sample(s, source.info, s['name']) == [] for s in samples)
    # The same (image, label) records, in the order TFDS wrote them.
    assert (sorted((int(s['label']), s['image'].tobytes()) for s in samples)
            == sorted((label, image.tobytes()) for image, label in written[split]))


# ---------------------------------------------------------------------------------------- synthetic classification

def test_synthetic_classes_are_balanced_deterministic_and_told_apart_by_the_band():
  source = datasets.build_source(tiny_classification_config().data, 'train')
  assert source.info.task == 'classification' and source.info.class_names == ('boat', 'car', 'buoy', 'sign')
  labels = np.array([int(source[i]['label']) for i in range(len(source))])
  assert set(np.bincount(labels, minlength=4)) <= set(range(8, 25))  # 64 draws of 4 equally likely classes
  np.testing.assert_array_equal(source[5]['image'], pickle.loads(pickle.dumps(source))[5]['image'])
  for index in range(16):
    image, class_id = synthetic_classification.render_classification_sample((0, 1, index), 32)
    bottom = image[-3:].reshape(-1, 3).astype(float).mean(axis=0)
    water = bottom[2] - bottom[0] > 40  # blue water against grey road
    assert water == (source.info.class_names[class_id] in ('boat', 'buoy')), (index, bottom)


# ------------------------------------------------------------------------------------------------------ transforms

def _padded_crop(image, top, left, flip):
  """What RandomCrop(32, padding=4) then a flip (when `flip`) make of a 32x32 image: written out for the test."""
  padded = np.zeros((40, 40, 3), np.uint8)
  padded[4:36, 4:36] = image
  window = padded[top:top + 32, left:left + 32]
  return window[:, ::-1] if flip else window


def test_cifar_augmentation_crops_the_padded_image_and_flips():
  rows, cols = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing='ij')
  image = np.stack([rows, cols, np.full_like(rows, 255)], axis=-1).astype(np.uint8)  # every pixel its own
  augment = transforms.ClassificationAugment((32, 32), padding=4, flip=True, image_pad_value=(0, 0, 0))
  draws = []
  for seed in range(64):
    out = augment.random_map({'image': image, 'label': np.int32(7)}, np.random.default_rng(seed))
    assert out['image'].shape == (32, 32, 3) and out['label'] == 7
    matches = [(top, left, flip) for top in range(9) for left in range(9) for flip in (False, True)
               if np.array_equal(out['image'], _padded_crop(image, top, left, flip))]
    assert len(matches) == 1, seed
    draws.append(matches[0])
  assert len({(top, left) for top, left, _ in draws}) > 30 and {flip for _, _, flip in draws} == {False, True}
  preprocess = transforms.ClassificationEvalPreprocess((40, 40), (0, 0, 0))
  out = preprocess.map({'image': image, 'label': np.int32(3), 'index': 5, 'name': 'x'})
  assert out['image'].shape == (40, 40, 3) and out['label'] == 3 and out['index'] == 5
  np.testing.assert_array_equal(out['image'][:32, :32], image)
  assert not out['image'][32:].any() and not out['image'][:, 32:].any()
  with pytest.raises(datasets.DataError, match=r'x: image is 32x32 \(HxW\), larger than config.data.eval_size'):
    transforms.ClassificationEvalPreprocess((16, 16), 0).map({'image': image, 'label': 0, 'name': 'x'})


# ------------------------------------------------------------------------------------------------------------ model

def _reference_gate(x, params, scale):
  """PyTorch-Encoding's EncLayer as it computes, in float64 numpy with the references' broadcast Encoding (BN at its
  initial statistics: mean 0, variance 1)."""
  x = np.asarray(x, np.float64)
  project = params['project']
  y = x @ np.asarray(project['conv']['kernel'][0, 0], np.float64) + np.asarray(project['conv']['bias'])
  y = np.maximum(y / np.sqrt(1 + 1e-5) * np.asarray(project['bn']['scale']) + np.asarray(project['bn']['bias']), 0)
  b, h, w, d = y.shape
  features = y.reshape(b, h * w, 1, d)
  codewords = np.asarray(params['encoding']['codewords'], np.float64)
  residuals = features - codewords  # (B, N, K, D)
  logits = scale * (residuals ** 2).sum(-1)
  assign = np.exp(logits - logits.max(-1, keepdims=True))
  assign /= assign.sum(-1, keepdims=True)
  encoded = (assign[..., None] * residuals).sum(1).reshape(b, -1)  # (B, K * D), code by code
  encoded /= np.maximum(np.linalg.norm(encoded, axis=-1, keepdims=True), 1e-8)
  gamma = 1 / (1 + np.exp(-(encoded @ np.asarray(params['fc']['kernel']) + np.asarray(params['fc']['bias']))))
  return x * gamma[:, None, None, :]


@pytest.mark.parametrize('scale_drop', [True, False])
def test_encoding_gate_matches_the_reference_layer(scale_drop):
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 16)) * 2 + 0.5
  gate = EncodingGate(num_codes=8, reduction=4, scale_drop=scale_drop)
  variables = gate.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)}, x, train=False)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), variables['params'])
  out = gate.apply({**variables, 'params': params}, x, train=False)
  scale = -0.5 if scale_drop else np.asarray(params['encoding']['scale'], np.float64)
  np.testing.assert_allclose(out, _reference_gate(x, params, scale), rtol=1e-4, atol=1e-5)
  moved_scale = jax.tree_util.tree_map_with_path(
      lambda path, p: p - 1.0 if 'scale' in str(path[-1]) and 'encoding' in str(path) else p, params)
  moved = gate.apply({**variables, 'params': moved_scale}, x, train=False)
  assert np.array_equal(moved, out) == scale_drop  # EncDrop's inference ignores the learned smoothing factors
  if scale_drop:
    train_out = [gate.apply({**variables, 'params': params}, x, train=True, rngs={'dropout': jax.random.key(k)},
                            mutable=['batch_stats'])[0] for k in (5, 5, 6)]
    np.testing.assert_array_equal(train_out[0], train_out[1])
    assert not np.allclose(train_out[0], train_out[2])  # smoothing factors drawn per step from the dropout key


def test_cifar_network_shapes_and_the_baseline_lacks_only_the_modules():
  config = tiny_classification_config()
  model = experiment.build(config, jax.devices()[:1]).model
  images = jnp.zeros((2, 32, 32, 3))
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, images, train=True)
  outputs = model.apply(variables, images, train=False)
  assert outputs['logits'].shape == (2, 4) and outputs['logits'].dtype == jnp.float32
  stages = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(2)},
                       mutable=['batch_stats'])[0]['stage_features']
  assert [s.shape for s in stages] == [(2, 32, 32, 4), (2, 16, 16, 8), (2, 8, 8, 16)]
  baseline = experiment.build(tiny_classification_config(num_codes=0), jax.devices()[:1]).model
  base_vars = baseline.init({'params': jax.random.key(0)}, images, train=True)
  flat = lambda tree: set(traverse_util.flatten_dict(tree, sep='/'))  # noqa: E731
  assert flat(variables['params']) - flat(base_vars['params']) == {
      k for k in flat(variables['params']) if '/gate/' in k}
  assert flat(base_vars['params']) <= flat(variables['params'])


def test_summary_of_encnet_cifar10_is_the_reference_count(tmp_path):
  """--mode summary of configs/encnet_cifar10.py: the parameter count derived from PyTorch-Encoding's layer list
  (tests/test_param_counts.py), and a FLOP count of the classifier's forward pass."""
  name, from_layers, written = REFERENCES['configs/encnet_cifar10.py']
  result = summary.summarize(load('configs/encnet_cifar10.py'), tmp_path)
  assert result['params_total'] == result['params_inference'] == from_layers == written
  assert json.loads((tmp_path / 'summary.json').read_text())['params_total'] == from_layers
  # One 32x32 image's forward pass is mostly its 3x3 convs: 2 FLOPs per multiply-add, of which XLA counts those on
  # taps inside the image (the zero padding's are left out: up to 16% at 8x8).
  convs = 2 * 9 * (32 * 32 * (3 * 128 + 4 * 128 * 128) + 16 * 16 * (128 * 256 + 3 * 256 * 256)
                   + 8 * 8 * (256 * 512 + 3 * 512 * 512))
  assert 0.8 * convs < result['flops_inference'] < 1.2 * convs


# ------------------------------------------------------------------------------------------------------- the trainer

def test_config_refuses_heads_and_evaluation_that_do_not_suit_the_dataset():
  config = tiny_classification_config()
  config.data.name = 'synthetic_context'
  with pytest.raises(config_lib.ConfigError, match=r"heads.classifier is a 'classifier' head, which scores images; "
                                                   r"data.name='synthetic_context' is a segmentation dataset"):
    experiment.validate_config(config)
  segmentation = base_config()
  segmentation.data.name = 'synthetic_classification'
  with pytest.raises(config_lib.ConfigError, match=r"heads.aux_head is a 'fcn' head, which scores pixels") as error:
    experiment.validate_config(segmentation)
  assert "heads.decode_head is a 'fcn' head" in str(error.value) and "['classifier']" in str(error.value)
  config = tiny_classification_config()
  config.eval.flip = True
  config.eval.boundary_px = (3,)
  with pytest.raises(config_lib.ConfigError, match=r"config.eval.flip, boundary_px apply to segmentation"):
    experiment.validate_config(config)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_one_device_and_eight_devices_agree():
  """One step of the EncNet CIFAR network (EncDrop draws its smoothing factors from the step's key) on a global
  batch of 8, on 1 and on 8 devices: same loss, parameters and BatchNorm statistics (exact SyncBN)."""
  config = tiny_classification_config()
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    exp = experiment.build(config, devices)
    source = datasets.build_source(config.data, 'train')
    batch = next(pipeline.train_iterator(source, config.data, config.train.batch_size, config.seed))
    assert batch['label'].shape == (8,) and batch['image'].shape == (8, 32, 32, 3)
    state, metrics = exp.train_step(exp.init_state(), parallel.to_global(batch, exp.mesh))
    results.append((state, jax.device_get(metrics)))
  (state_1, metrics_1), (state_8, metrics_8) = results
  assert metrics_1['loss'] > 0 and metrics_1['loss'] == pytest.approx(metrics_8['loss'], rel=1e-5)
  for a, b in zip(_leaves((state_1.params, state_1.batch_stats)), _leaves((state_8.params, state_8.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  init = experiment.build(config, jax.devices()[:1]).init_state()
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(_leaves(state_1.params), _leaves(init.params))) > 1e-4


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('classification')
  return workdir, train.train(tiny_classification_config(), workdir, devices=jax.devices()[:1])


def test_training_reports_top1_and_resumes_exactly(uninterrupted, tmp_path, monkeypatch):
  workdir_a, results_a = uninterrupted
  assert set(results_a) == {'top1', 'error', 'macc', 'acc/boat', 'acc/car', 'acc/buoy', 'acc/sign'}
  assert 0 <= results_a['top1'] <= 100 and results_a['error'] == pytest.approx(100 - results_a['top1'])
  records = reporting.read_metrics(workdir_a)
  assert [r['step'] for r in records if r['split'] == 'train'] == [2, 4, 6]
  assert all({'loss', 'loss_ce', 'lr'} <= r.keys() for r in records if r['split'] == 'train')
  evaluation = [r for r in records if r['split'] == 'eval']
  assert [r['step'] for r in evaluation] == [6] and evaluation[0]['top1'] == results_a['top1']
  assert 'acc/sign' in evaluation[0]
  ranked = json.loads((workdir_a / 'checkpoint_metrics.json').read_text())
  assert ranked == {'6': {'top1': results_a['top1']}}  # the best-checkpoint retention ranks by top-1

  config = tiny_classification_config()
  monkeypatch.setattr(train._Preemption, 'reached', lambda self, checkpointer, step: step == 4)
  assert train.train(config, tmp_path, devices=jax.devices()[:1]) == {}
  monkeypatch.undo()
  results_b = train.train(config, tmp_path, devices=jax.devices()[:1])
  states = []
  for workdir in (workdir_a, tmp_path):
    checkpointer = Checkpointer(workdir, create=False)
    states.append(checkpointer.restore(experiment.build(config, jax.devices()[:1]).abstract_state()))
    checkpointer.close()
  assert states[0][0] == states[1][0] == 6
  for a, b in zip(_leaves(states[0][1]), _leaves(states[1][1])):
    np.testing.assert_array_equal(a, b)
  assert results_b == results_a


def test_eval_mode_reproduces_the_final_top1(uninterrupted, capsys):
  workdir, results = uninterrupted
  assert evaluate.evaluate(tiny_classification_config(), workdir) == results
  assert f'top-1 {results["top1"]:.2f}  error {results["error"]:.2f}' in capsys.readouterr().out
  with pytest.raises(config_lib.ConfigError, match='--output writes per-image segmentation scores'):
    evaluate.evaluate(tiny_classification_config(), workdir, output=str(workdir / 'out'))


def test_check_data_counts_images_per_class(capsys):
  assert check_data(tiny_classification_config()) == []
  out = capsys.readouterr().out
  assert 'Class frequencies in synthetic_classification/train (64 images)' in out
  assert 'No problems found.' in out


def test_the_classifier_head_is_registered_for_images_only():
  assert HEADS['classifier'].level == 'image' and HEADS['fcn'].level == 'pixel'
  assert models.HEAD_LEVELS == {'segmentation': 'pixel', 'classification': 'image'}
  assert BACKBONES.config('cifar_resnet').num_codes == 32


# --------------------------------------------------------------------------------------------------------- the CLI

TINY_DEMO = ['--config.model.backbone.base_width=4', '--config.model.backbone.blocks=1',
             '--config.data.synthetic.num_train=64', '--config.data.synthetic.num_val=16',
             '--config.data.worker_count=0', '--config.train.batch_size=8', '--config.eval.batch_size=8',
             '--config.train.checkpoint_every=2', '--config.train.eval_every=4', '--config.train.log_every=2']


@pytest.mark.slow
def test_the_classification_demo_trains_and_resumes_from_the_cli(tmp_path):
  def run(*extra):
    command = [sys.executable, '-m', 'ctxseg_jax.main', '--config', 'configs/demo_classification.py', '--workdir',
               str(tmp_path), *TINY_DEMO, *extra]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout

  first = run('--config.train.steps=4')
  assert 'top-1' in first and 'Resumed' not in first
  resumed = run('--config.train.steps=6')
  assert 'Resumed from step 4' in resumed
  records = reporting.read_metrics(tmp_path)
  assert [r['step'] for r in records if r['split'] == 'train'] == [2, 4, 6]
  assert [r['step'] for r in records if r['split'] == 'eval'] == [4, 6]
  final = [r for r in records if r['split'] == 'eval'][-1]
  assert 0 <= final['top1'] <= 100 and final['error'] == pytest.approx(100 - final['top1'])
  assert f'top-1 {final["top1"]:.2f}  error {final["error"]:.2f}' in resumed
