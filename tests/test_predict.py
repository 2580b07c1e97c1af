"""`--mode predict`: label PNGs equal the predict step's argmax, resumable outputs, errors, Cityscapes labelIds, the
labelled split's scores and comparison images, and the command line."""
import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from ctxseg_jax import experiment, parallel, predict
from ctxseg_jax.checkpoints import Checkpointer
from ctxseg_jax.config import ConfigError
from ctxseg_jax.data import datasets, transforms
from ctxseg_jax.data.datasets.base import DataError
from ctxseg_jax.data.export import label_palette
from tests import layouts
from tests.tiny_config import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Written out from cityscapesScripts' labels.py (trainId 0..18 -> id), not derived from the code under test.
CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def _save_initial_checkpoint(config, workdir):
  """Step 0 of `config`'s model (the cheapest checkpoint: no training step); returns its variables."""
  state = experiment.build(config).init_state()
  checkpointer = Checkpointer(workdir)
  checkpointer.save(0, state, None, config)
  checkpointer.wait()
  checkpointer.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('predict_workdir')
  config = get_config()
  return config, workdir, _save_initial_checkpoint(config, workdir)


def _write_images(folder):
  """Three images of different sizes (PNG, JPEG, one in a sub-folder), all within the tiny eval size 32x32."""
  rng = np.random.default_rng(0)
  images = {'a': ('a.png', (32, 32)), 'b': ('b.jpg', (20, 28)), 'c': ('sub/c.png', (24, 17))}
  for relative, (height, width) in images.values():
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
  (folder / 'notes.txt').write_text('not an image')  # not an image suffix: not listed
  return {stem: folder / relative for stem, (relative, _) in images.items()}


def _expected_predictions(config, variables, paths):
  """predict_step's argmax for each image, cropped to its size: batched here by hand, not by predict.py."""
  preprocess = transforms.EvalPreprocess.from_config(config.data)
  samples = [preprocess.map({'image': np.asarray(Image.open(p).convert('RGB')), 'index': i})
             for i, p in enumerate(paths)]
  samples += [samples[0]] * (config.eval.batch_size - len(samples))
  batch = {key: np.stack([s[key] for s in samples]) for key in samples[0]}
  exp = experiment.build(config)
  predicted = np.asarray(exp.predict_step(variables, parallel.to_global(batch, exp.mesh)))
  return [predicted[i, :h, :w] for i, (h, w) in enumerate(s['original_size'] for s in samples[:len(paths)])]


def _mtimes(folder):
  return {p: os.stat(p).st_mtime_ns for p in sorted(str(p) for p in folder.rglob('*'))}


def test_label_pngs_are_the_predict_step_argmax_at_original_size(checkpoint, tmp_path):
  config, workdir, variables = checkpoint
  images = _write_images(tmp_path / 'in')
  out = tmp_path / 'out'
  result = predict.predict(config, workdir, out, input_path=str(tmp_path / 'in'))
  assert result['step'] == 0 and result['predicted'] == ['a', 'b', 'c'] and result['skipped'] == []
  expected = _expected_predictions(config, variables, list(images.values()))
  info = datasets.dataset_info(config.data)
  for (stem, path), want in zip(images.items(), expected):
    png = Image.open(out / f'{stem}.png')
    assert png.mode == 'P' and png.getpalette()[:3 * 256] == label_palette(info)
    np.testing.assert_array_equal(np.asarray(png), want)
    overlay = Image.open(out / f'{stem}_overlay.jpg')
    assert overlay.format == 'JPEG' and overlay.size == Image.open(path).size
    assert not (out / f'{stem}_compare.png').exists()
  assert len({int(v) for want in expected for v in np.unique(want)}) > 1  # a non-trivial round trip
  assert not (out / predict.CSV_FILE).exists()


def test_second_run_writes_nothing_and_a_deleted_output_alone_is_redone(checkpoint, tmp_path):
  config, workdir, _ = checkpoint
  _write_images(tmp_path / 'in')
  out = tmp_path / 'out'
  predict.predict(config, workdir, out, input_path=str(tmp_path / 'in'))
  before = _mtimes(out)
  again = predict.predict(config, workdir, out, input_path=str(tmp_path / 'in'))
  assert again['predicted'] == [] and again['skipped'] == ['a', 'b', 'c']
  assert _mtimes(out) == before
  (out / 'b_overlay.jpg').unlink()
  redone = predict.predict(config, workdir, out, input_path=str(tmp_path / 'in'))
  assert redone['predicted'] == ['b']
  after = _mtimes(out)
  assert set(after) == set(before)
  assert {p for p in after if after[p] != before[p]} <= {str(out / f) for f in ('b.png', 'b_overlay.jpg')}
  assert not [p for p in after if '.tmp' in p]


def test_output_inside_the_input_folder_is_left_out_of_the_input(checkpoint, tmp_path):
  config, workdir, _ = checkpoint
  _write_images(tmp_path)
  result = predict.predict(config, workdir, tmp_path / 'predictions', input_path=str(tmp_path))
  assert result['predicted'] == ['a', 'b', 'c']
  again = predict.predict(config, workdir, tmp_path / 'predictions', input_path=str(tmp_path / '**' / '*.png'))
  assert again['predicted'] == [] and again['skipped'] == ['a', 'c']  # a glob; outputs are not inputs
  with pytest.raises(DataError, match='is the --input folder'):
    predict.predict(config, workdir, tmp_path, input_path=str(tmp_path))


def test_unreadable_or_too_large_image_is_an_error_naming_it(checkpoint, tmp_path):
  config, workdir, _ = checkpoint
  _write_images(tmp_path / 'in')
  (tmp_path / 'in' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  # The planning pass reads every image's header first (eval_plan): a broken file is named there.
  with pytest.raises(DataError, match=r'in/broken\.png: cannot read the image header .*fix or remove it'):
    predict.predict(config, workdir, tmp_path / 'out', input_path=str(tmp_path / 'in'))
  Image.new('RGB', (40, 30)).save(tmp_path / 'large.png')
  with pytest.raises(DataError, match=r'large\.png: .*larger than .*--config\.data\.eval_size'):
    predict.predict(config, workdir, tmp_path / 'out', input_path=str(tmp_path / 'large.png'))


def test_clashing_stems_and_missing_input_are_named(checkpoint, tmp_path):
  config, workdir, _ = checkpoint
  _write_images(tmp_path / 'in')
  Image.new('RGB', (8, 8)).save(tmp_path / 'in' / 'sub' / 'a.png')
  with pytest.raises(DataError, match=r'in/a\.png and .*in/sub/a\.png would both write .*a\.png'):
    predict.predict(config, workdir, tmp_path / 'out', input_path=str(tmp_path / 'in'))
  with pytest.raises(DataError, match='no such file or folder'):
    predict.predict(config, workdir, tmp_path / 'out', input_path=str(tmp_path / 'missing'))


@pytest.mark.parametrize('name, stem', [('/data/cityscapes/leftImg8bit/val/lindau/x_leftImg8bit.png', 'x_leftImg8bit'),
                                        ('photos/IMG 0001.JPG', 'IMG_0001'), ('synthetic_context/val/17', '17'),
                                        ('/data/packed/val[3]', 'val_3'), ('archive.tar.gz', 'archive.tar')])
def test_output_stems(name, stem):
  assert predict.output_stem(name) == stem


def _image_miou(prediction, label, num_classes):
  """mIoU in percent over the classes in the label or the prediction, on labelled pixels."""
  valid = label < num_classes
  prediction, label = prediction[valid], label[valid]
  ious = [np.sum((prediction == k) & (label == k)) / np.sum((prediction == k) | (label == k))
          for k in range(num_classes) if np.any(prediction == k) or np.any(label == k)]
  return 100 * float(np.mean(ious))


def test_labelled_split_writes_per_image_scores_and_comparisons(checkpoint, tmp_path):
  config, workdir, _ = checkpoint
  result = predict.predict(config, workdir, tmp_path)  # no input: the eval split, 12 images in 2 batches
  source = datasets.build_source(config.data, config.data.eval_split)
  stems = [str(i) for i in range(len(source))]
  assert result['predicted'] == stems
  with open(tmp_path / predict.CSV_FILE) as f:
    rows = list(csv.DictReader(f))
  info = source.info
  assert list(rows[0]) == ['name', 'image', 'miou'] + [f'iou/{name}' for name in info.class_names]
  assert [row['name'] for row in rows] == stems
  for index in (0, 11):
    label = source[index]['label']
    prediction = np.asarray(Image.open(tmp_path / f'{index}.png'))
    assert float(rows[index]['miou']) == pytest.approx(_image_miou(prediction, label, info.num_classes), abs=0.006)
    compare = Image.open(tmp_path / f'{index}_compare.png')
    assert compare.width >= 3 * label.shape[1] and compare.height > label.shape[0]
  # A folder written from another checkpoint is refused.
  manifest = (tmp_path / predict.MANIFEST_FILE).read_text().replace('"step": 0', '"step": 5')
  (tmp_path / predict.MANIFEST_FILE).write_text(manifest)
  with pytest.raises(DataError, match='written with step 5'):
    predict.predict(config, workdir, tmp_path)


def test_cityscapes_label_ids(tmp_path):
  np.testing.assert_array_equal(predict.cityscapes_label_ids(np.arange(19, dtype=np.uint8)), CITYSCAPES_LABEL_IDS)
  with pytest.raises(ConfigError, match='needs a model of the 19 Cityscapes classes'):
    predict.predict(get_config(), tmp_path, tmp_path / 'out', label_format='cityscapes_label_ids')
  layouts.cityscapes(tmp_path / 'cityscapes')  # val: 2 images 16x32, raw labelIds
  config = get_config()
  config.data.name, config.data.root = 'cityscapes', str(tmp_path / 'cityscapes')
  config.data.eval_size = (16, 32)
  _save_initial_checkpoint(config, tmp_path / 'workdir')
  ids = predict.predict(config, tmp_path / 'workdir', tmp_path / 'ids', label_format='cityscapes_label_ids')
  palette = predict.predict(config, tmp_path / 'workdir', tmp_path / 'palette')
  assert ids['predicted'] == palette['predicted'] == ['lindau_000000_000019_leftImg8bit',
                                                      'lindau_000001_000019_leftImg8bit']
  for stem in ids['predicted']:
    label_ids = Image.open(tmp_path / 'ids' / f'{stem}.png')
    assert label_ids.mode == 'L' and label_ids.size == (32, 16)
    train_ids = np.asarray(Image.open(tmp_path / 'palette' / f'{stem}.png'))
    np.testing.assert_array_equal(np.asarray(label_ids), np.asarray(CITYSCAPES_LABEL_IDS)[train_ids])


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or '')
  return subprocess.run([sys.executable, '-m', 'ctxseg_jax.main', '--config', 'tests/tiny_config.py', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_dispatches_predict(checkpoint, tmp_path):
  _, workdir, _ = checkpoint
  _write_images(tmp_path / 'in')
  result = _cli('--workdir', str(workdir), '--mode', 'predict', '--input', str(tmp_path / 'in'), '--output',
                str(tmp_path / 'out'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Wrote the predictions of 3 images' in result.stdout
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == sorted(
      [predict.MANIFEST_FILE] + [f'{s}{suffix}' for s in 'abc' for suffix in ('.png', '_overlay.jpg')])
  missing_output = _cli('--workdir', str(workdir), '--mode', 'predict')
  assert missing_output.returncode == 2 and '--mode predict needs --output' in missing_output.stderr


def test_eval_per_image_scores_equal_predicts_and_the_worst_images_are_written(checkpoint, tmp_path):
  """--mode eval --output scores every image from the eval step's per-image confusions; --mode predict from its
  own predictions: the two per_image.csv agree; --worst 2 writes the two lowest rows' images."""
  config, workdir, _ = checkpoint
  predict.predict(config, workdir, tmp_path / 'predicted')
  result = _cli('--workdir', str(workdir), '--mode', 'eval', '--output', str(tmp_path / 'eval'), '--worst', '2')
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {}
  for folder in ('predicted', 'eval'):
    with open(tmp_path / folder / predict.CSV_FILE) as f:
      rows[folder] = list(csv.DictReader(f))
  assert rows['eval'] == rows['predicted'] and len(rows['eval']) == 12
  lowest = sorted(rows['eval'], key=lambda row: (float(row['miou']), int(row['name'])))[:2]
  written = sorted(p.name for p in (tmp_path / 'eval').iterdir() if p.name.startswith('worst'))
  assert written == sorted(f'worst{rank}_{row["name"]}{suffix}' for rank, row in enumerate(lowest, 1)
                           for suffix in ('.png', '_overlay.jpg', '_compare.png'))
  refused = _cli('--workdir', str(workdir), '--mode', 'eval', '--worst', '2')
  assert refused.returncode == 2 and '--worst N (N >= 1) applies to --mode eval with --output' in refused.stderr
