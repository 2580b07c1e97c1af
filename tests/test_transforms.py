"""Train augmentation (cat_max_ratio, photometric distortion), image resampling with and without antialiasing
(data.resize_antialias), eval resizing and scoring at original resolution, and exact resume of a real-layout
pipeline across an Orbax checkpoint."""
from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ctxseg_jax import config as config_lib
from ctxseg_jax import experiment, metrics, parallel, steps
from ctxseg_jax.checkpoints import Checkpointer
from ctxseg_jax.data import datasets, pipeline, transforms
from ctxseg_jax.models.layers.resize import resize_bilinear, resize_bilinear_regions
from tests import layouts
from tests.tiny_config import get_config


def _corner_label():
  """64x64, class 1 only in a 24x24 corner: few 32x32 crops hold both classes with neither above 75%."""
  label = np.zeros((64, 64), np.uint8)
  label[:24, :24] = 1
  return label


def _share_of_balanced_crops(cat_max_ratio: float) -> float:
  label, balanced = _corner_label(), 0
  for seed in range(200):
    top, left = transforms.crop_with_cat_max_ratio(label, (32, 32), cat_max_ratio, np.random.default_rng(seed))
    counts = np.bincount(label[top:top + 32, left:left + 32].reshape(-1), minlength=2)
    balanced += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
  return balanced / 200


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
  # One draw is balanced with probability p ~ 0.1 (the offsets whose overlap with the corner is 256..768
  # pixels); with 10 re-draws, 1 - (1 - p)^11 ~ 0.7.
  assert _share_of_balanced_crops(1.0) < 0.2
  assert _share_of_balanced_crops(0.75) > 0.6
  label = np.full((40, 40), 255, np.uint8)  # ignore pixels never count as a class
  label[:, :20] = 3
  top, left = transforms.crop_with_cat_max_ratio(label, (40, 40), 0.75, np.random.default_rng(0))
  assert (top, left) == (0, 0)  # a single possible crop: kept after the re-draws fail


def _augment(**overrides):
  kwargs = dict(base_size=64, ratio_range=(0.5, 2.0), crop_size=(32, 48), flip=True, image_pad_value=0)
  return transforms.TrainAugment(**{**kwargs, **overrides})


def test_photometric_distortion_changes_pixels_not_geometry():
  rng = np.random.default_rng(0)
  sample = {'image': rng.integers(0, 256, (50, 64, 3), dtype=np.uint8), 'label': _corner_label()[:50]}
  plain = _augment().random_map(sample, np.random.default_rng(5))
  distorted = _augment(photometric_distortion=True).random_map(sample, np.random.default_rng(5))
  np.testing.assert_array_equal(plain['label'], distorted['label'])  # drawn before the distortion
  assert distorted['image'].dtype == np.uint8 and distorted['image'].shape == (32, 48, 3)
  changed = sum(not np.array_equal(_augment().random_map(sample, np.random.default_rng(s))['image'],
                                   _augment(photometric_distortion=True).random_map(
                                       sample, np.random.default_rng(s))['image']) for s in range(10))
  assert changed >= 7


def test_identity_augmentation_returns_the_sample():
  rng = np.random.default_rng(1)
  sample = {'image': rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), 'label': _corner_label()[:32, :48]}
  out = _augment(ratio_range=(1.0, 1.0), base_size=48, flip=False).random_map(sample, rng)
  np.testing.assert_array_equal(out['image'], sample['image'])
  np.testing.assert_array_equal(out['label'], sample['label'])


@pytest.mark.parametrize('size, scale, expected', [
    ((375, 500), (520, 520), (390, 520)),      # PyTorch-Encoding base size 520: the long side binds
    ((512, 683), (2048, 512), (512, 683)),     # a typical ADE20K image: unchanged
    ((600, 800), (2048, 512), (512, 683)),     # the short side binds: 512 / 600 = 0.8533
    ((1024, 2048), (2048, 1024), (1024, 2048)),
    ((100, 1000), (2048, 512), (205, 2048)),   # aspect > 4: the long side binds
    ((300, 400), (0, 0), (300, 400)),          # native
])
def test_eval_rescale_size_follows_mmcv_keep_ratio(size, scale, expected):
  assert transforms.eval_rescale_size(*size, scale) == expected


def test_eval_preprocess_resizes_the_image_and_keeps_the_label():
  rng = np.random.default_rng(2)
  sample = {'image': rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
            'label': rng.integers(0, 5, (30, 40), dtype=np.uint8), 'name': 'x.png'}
  out = transforms.EvalPreprocess(eval_size=(52, 52), label_size=(32, 48), eval_scale=(52, 52),
                                  image_pad_value=7).map(sample)
  assert out['image'].shape == (52, 52, 3) and out['label'].shape == (32, 48)
  assert out['image_size'].tolist() == [39, 52] and out['original_size'].tolist() == [30, 40]
  assert (out['image'][39:] == 7).all()
  np.testing.assert_array_equal(out['label'][:30, :40], sample['label'])
  assert (out['label'][30:] == 255).all() and (out['label'][:, 40:] == 255).all()
  with pytest.raises(datasets.DataError, match=r'x\.png.*eval_label_size'):
    transforms.EvalPreprocess(eval_size=(52, 52), label_size=(20, 48), eval_scale=(52, 52),
                              image_pad_value=0).map(sample)
  with pytest.raises(datasets.DataError, match=r'x\.png.*39x52.*config\.data\.eval_size'):
    transforms.EvalPreprocess(eval_size=(40, 40), label_size=(32, 48), eval_scale=(52, 52),
                              image_pad_value=0).map(sample)


def _direct_linear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """OpenCV INTER_LINEAR's value of each output pixel, in float64 and unrounded: (H, W, C) -> (h, w, C)."""
  def taps(dst, n_in, n_out):
    src = min(max((dst + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
    lo = int(np.floor(src))
    return lo, min(lo + 1, n_in - 1), src - lo

  image = image.astype(np.float64)
  out = np.empty((*size, image.shape[2]))
  for y in range(size[0]):
    y0, y1, fy = taps(y, image.shape[0], size[0])
    for x in range(size[1]):
      x0, x1, fx = taps(x, image.shape[1], size[1])
      out[y, x] = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
                   + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))
  return out


def _stripes(height: int, width: int) -> np.ndarray:
  """uint8 (height, width, 3) noise on one-pixel stripes: what antialiasing smooths when shrinking."""
  rng = np.random.default_rng(7)
  stripes = np.where(np.arange(width) % 2 == 0, 220, 30)[None, :, None]
  return np.clip(stripes + rng.integers(-25, 26, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('size', [(4, 9), (23, 5), (40, 52), (11, 17)])  # shrink, mixed, enlarge, identity
def test_resize_linear_rounds_the_direct_bilinear_formula(size):
  image = np.random.default_rng(4).integers(0, 256, (11, 17, 3), dtype=np.uint8)
  out = transforms.resize_linear(image, size)
  assert out.dtype == np.uint8 and out.shape == (*size, 3)
  # The rounded exact value: equal to floor(value + 0.5) except where value is within float32 error of a tie.
  assert np.abs(out - _direct_linear(image, size)).max() <= 0.5 + 1e-3


def test_antialias_is_pil_bilinear_and_differs_when_shrinking():
  image = _stripes(32, 48)
  pil = np.asarray(Image.fromarray(image).resize((16, 8), Image.BILINEAR))
  np.testing.assert_array_equal(transforms.resize_image(image, (8, 16), antialias=True), pil)
  linear = transforms.resize_image(image, (8, 16), antialias=False)
  np.testing.assert_array_equal(linear, transforms.resize_linear(image, (8, 16)))
  # Shrinking the stripes 3x: PIL averages them towards grey; the two-tap resize samples one stripe per pixel.
  assert pil.astype(float).std() < 20 < linear.astype(float).std()


def test_upscaling_agrees_between_the_two_modes():
  image = np.random.default_rng(5).integers(0, 256, (13, 17, 3), dtype=np.uint8)
  for size in [(26, 34), (40, 23), (13, 50)]:
    pil = transforms.resize_image(image, size, antialias=True).astype(int)
    assert np.abs(pil - transforms.resize_image(image, size, antialias=False)).max() <= 1


@pytest.mark.parametrize('size', [(23, 41), (7, 9), (11, 17)])  # enlarge, shrink, identity
def test_resize_linear_window_is_exactly_that_part_of_the_whole_resize(size):
  image = np.random.default_rng(7).integers(0, 256, (11, 17, 3), dtype=np.uint8)
  whole = transforms.resize_linear(image, size)
  for rows, cols in [(slice(0, 5), slice(3, 9)), (slice(size[0] - 4, size[0]), slice(0, size[1])),
                     (slice(2, 3), slice(size[1] - 1, size[1]))]:
    np.testing.assert_array_equal(transforms.resize_linear(image, size, (rows, cols)), whole[rows, cols])


def test_train_crop_of_the_windowed_resize_equals_cropping_the_whole_resize():
  rng = np.random.default_rng(8)
  sample = {'image': rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
            'label': rng.integers(0, 4, (30, 40), dtype=np.uint8)}
  augment = _augment(base_size=40, ratio_range=(1.5, 1.5), crop_size=(16, 20), flip=False,
                     resize_antialias=False, cat_max_ratio=0.75)
  for seed in range(4):
    out = augment.random_map(sample, np.random.default_rng(seed))
    label = transforms.resize_label(sample['label'], (45, 60))
    draws = np.random.default_rng(seed)
    draws.uniform(1.5, 1.5)  # random_map draws the ratio first, then the crop
    top, left = transforms.crop_with_cat_max_ratio(label, (16, 20), 0.75, draws)
    whole = transforms.resize_linear(sample['image'], (45, 60))
    np.testing.assert_array_equal(out['image'], whole[top:top + 16, left:left + 20])
    np.testing.assert_array_equal(out['label'], label[top:top + 16, left:left + 20])


@pytest.mark.parametrize('antialias', [True, False])
def test_resize_antialias_chooses_the_image_resize_of_train_augment_and_eval(antialias):
  image, label = _stripes(30, 48), np.tile((np.arange(48) % 7).astype(np.uint8), (30, 1))
  expected = transforms.resize_image(image, (10, 16), antialias)
  other = transforms.resize_image(image, (10, 16), not antialias)
  assert np.abs(expected.astype(int) - other).max() > 50
  augment = _augment(base_size=48, ratio_range=(1 / 3, 1 / 3), crop_size=(10, 16), flip=False,
                     resize_antialias=antialias)
  out = augment.random_map({'image': image, 'label': label}, np.random.default_rng(0))
  np.testing.assert_array_equal(out['image'], expected)
  np.testing.assert_array_equal(out['label'], np.asarray(Image.fromarray(label).resize((16, 10), Image.NEAREST)))
  evaluated = transforms.EvalPreprocess(eval_size=(12, 16), label_size=(30, 48), eval_scale=(16, 16),
                                        image_pad_value=0, resize_antialias=antialias).map(
                                            {'image': image, 'label': label})
  np.testing.assert_array_equal(evaluated['image'][:10], expected)
  np.testing.assert_array_equal(evaluated['label'], label)


def test_config_resize_antialias_reaches_the_train_and_eval_pipelines():
  config = get_config()
  config.data.ratio_range = (0.5, 0.5)  # every training image is shrunk 2x ...
  config.data.crop_size = (16, 16)
  config.data.eval_scale = (16, 16)     # ... and so is every eval image
  config.data.eval_size, config.data.eval_label_size = (16, 16), (32, 32)
  train_source, val_source = (datasets.build_source(config.data, split) for split in ('train', 'val'))
  batches = {}
  for antialias in (True, False):
    config.data.resize_antialias = antialias
    assert transforms.EvalPreprocess.from_config(config.data).resize_antialias is antialias
    train = next(pipeline.train_iterator(train_source, config.data, 8, seed=0))
    eval_iterator, _ = pipeline.eval_batches(val_source, config.data, 8)
    evaluation = next(eval_iterator)
    eval_iterator.close()
    batches[antialias] = train, evaluation
  for with_pil, without in zip(batches[True], batches[False]):
    np.testing.assert_array_equal(with_pil['label'], without['label'])  # labels: nearest either way
    assert not np.array_equal(with_pil['image'], without['image'])


def test_region_resize_equals_resizing_each_cropped_region():
  x = jax.random.normal(jax.random.key(0), (3, 20, 24, 5))
  in_sizes = np.array([[20, 24], [13, 17], [7, 24]])
  out_sizes = np.array([[20, 24], [25, 9], [16, 30]])
  out = np.asarray(resize_bilinear_regions(x, jnp.asarray(in_sizes), jnp.asarray(out_sizes), (26, 31)))
  assert out.shape == (3, 26, 31, 5)
  for b, ((ih, iw), (oh, ow)) in enumerate(zip(in_sizes, out_sizes)):
    direct = resize_bilinear(x[b:b + 1, :ih, :iw], (int(oh), int(ow)))[0]
    np.testing.assert_allclose(out[b, :oh, :ow], direct, rtol=1e-6, atol=1e-6)


def test_eval_with_resize_scores_every_original_pixel_once():
  config = get_config()
  config.data.eval_scale = (48, 48)        # 32x32 synthetic images are evaluated at 48x48 ...
  config.data.eval_size = (48, 48)
  config.data.eval_label_size = (32, 32)   # ... and scored at 32x32
  exp = experiment.build(config)
  state = exp.init_state()
  batches, _ = pipeline.eval_batches(datasets.build_source(config.data, 'val'), config.data, 8)
  batches = list(batches)
  assert all(batch['image'].shape == (8, 48, 48, 3) and batch['label'].shape == (8, 32, 32) for batch in batches)
  accumulator = metrics.ConfusionAccumulator(exp.info.num_classes)
  for batch in batches:
    accumulator.add(exp.eval_step({'params': state.params, 'batch_stats': state.batch_stats},
                                  parallel.to_global(batch, exp.mesh))['confusion'], 8 * 32 * 32)
  assert int(accumulator.result().sum()) == sum(int((batch['label'] != 255).sum()) for batch in batches)


def test_real_layout_stream_resumes_exactly_across_a_checkpoint(tmp_path):
  layouts.cityscapes(tmp_path / 'data', size=(32, 64))
  config = config_lib.base_config()
  config.data.name, config.data.root = 'cityscapes', str(tmp_path / 'data')
  config.data.base_size, config.data.crop_size = 64, (24, 40)
  config.data.cat_max_ratio, config.data.photometric_distortion = 0.75, True
  config.data.worker_count = 0
  source = datasets.build_source(config.data, 'train')
  iterator = pipeline.train_iterator(source, config.data, 2, seed=4)
  for _ in range(3):
    next(iterator)
  checkpointer = Checkpointer(tmp_path / 'run')
  state = steps.TrainState(step=np.int32(3), params={'w': np.ones(2, np.float32)},
                           batch_stats={'m': np.zeros(2, np.float32)}, opt_state={})
  checkpointer.save(3, state, iterator, config)
  checkpointer.wait()
  expected = [next(iterator) for _ in range(4)]
  resumed = pipeline.train_iterator(source, config.data, 2, seed=4)
  step, _ = checkpointer.restore(jax.eval_shape(lambda: state), resumed)
  checkpointer.close()
  assert step == 3
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_padding_is_added_last_bottom_right_and_never_distorted():
  rng = np.random.default_rng(3)
  label = np.tile((np.arange(24) % 5).astype(np.uint8), (20, 1))  # asymmetric left to right
  sample = {'image': rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), 'label': label}
  augment = _augment(base_size=24, ratio_range=(1.0, 1.0), crop_size=(28, 30), photometric_distortion=True,
                     image_pad_value=(124, 116, 104))
  flips = 0
  for seed in range(12):
    out = augment.random_map(sample, np.random.default_rng(seed))
    assert (out['image'][20:] == (124, 116, 104)).all() and (out['image'][:, 24:] == (124, 116, 104)).all()
    assert (out['label'][20:] == 255).all() and (out['label'][:, 24:] == 255).all()
    flipped = not np.array_equal(out['label'][:20, :24], sample['label'])
    np.testing.assert_array_equal(out['label'][:20, :24], sample['label'][:, ::-1] if flipped else sample['label'])
    flips += flipped
  assert 0 < flips < 12


def test_ratio_step_draws_hrnets_discrete_scales(monkeypatch):
  sample = {'image': np.zeros((10, 20, 3), np.uint8), 'label': np.zeros((10, 20), np.uint8)}
  augment = _augment(base_size=20, ratio_range=(0.5, 2.1), ratio_step=0.1, crop_size=(64, 64), flip=False)
  widths = set()
  real = transforms.resize_label
  caller = threading.get_ident()

  def spy(label, size):
    if threading.get_ident() == caller:  # not the prefetch threads of iterators from other tests
      widths.add(size[1])
    return real(label, size)

  monkeypatch.setattr(transforms, 'resize_label', spy)
  for seed in range(300):
    augment.random_map(sample, np.random.default_rng(seed))
  assert widths == {int(round(20 * (0.5 + k / 10))) for k in range(17)}  # 10, 12, ..., 42: all 17 scales


def test_scaled_sizes_follow_each_reference_rounding():
  # HRNet multi_scale_aug: long side int(base * s + 0.5), short side int(short * long / long_orig + 0.5).
  assert transforms.scaled_size(1024, 2048, 0.75, 'hrnet', eval_scale=(0, 0), base_size=2048) == (768, 1536)
  assert transforms.scaled_size(375, 500, 1.25, 'hrnet', eval_scale=(0, 0), base_size=520) == (488, 650)
  # PyTorch-Encoding MultiEvalModule: long side ceil(base * s); a square image keeps its long side on the width.
  assert transforms.scaled_size(375, 500, 1.75, 'pte', eval_scale=(0, 0), base_size=520) == (683, 910)
  assert transforms.scaled_size(500, 333, 0.5, 'pte', eval_scale=(0, 0), base_size=520) == (260, 173)
  assert transforms.scaled_size(300, 300, 0.75, 'pte', eval_scale=(0, 0), base_size=520) == (390, 390)
  # mmseg MultiScaleFlipAug: the keep-ratio eval resize to (int(2048 s), int(512 s)).
  assert transforms.scaled_size(512, 683, 0.5, 'mmseg', eval_scale=(2048, 512), base_size=0) == (256, 342)
  assert transforms.scaled_size(30, 40, 1.25, 'mmseg', eval_scale=(0, 0), base_size=0) == (38, 50)


def test_multi_scale_eval_samples_carry_originals_and_scale_sizes_and_name_a_canvas_too_small():
  config = config_lib.base_config()
  config.eval.combine, config.eval.scales = 'pte', (0.5, 1.0, 1.75)
  config.data.base_size, config.data.eval_size, config.data.eval_label_size = 40, (40, 40), (40, 40)
  preprocess = transforms.EvalPreprocess.from_config(config.data, config.eval)
  image = np.full((30, 36, 3), 7, np.uint8)
  out = preprocess.map({'image': image, 'label': np.zeros((30, 36), np.uint8), 'index': 3})
  assert out['image'].shape == (40, 40, 3) and (out['image'][:30, :36] == 7).all()
  np.testing.assert_array_equal(out['image_size'], [30, 36])
  np.testing.assert_array_equal(out['scale_sizes'], [[17, 20], [33, 40], [58, 70]])
  assert out['index'] == 3
  config.data.eval_size = (30, 30)
  small = transforms.EvalPreprocess.from_config(config.data, config.eval)
  with pytest.raises(datasets.DataError, match=r'at scale 0.5 \(pte rule\).*config.data.eval_size=\(30, 30\) x 0.5'):
    small.map({'image': image})


def test_hrnet_520_eval_samples_are_hrnet_testval_images_padded_with_the_mean_colour():
  """HRNet resize_short_length: short side 520, long side int(long x 520 / short + 0.5) (a square's width counts
  as short), padded to a multiple of 8; multi_scale_aug then sizes the long side of the padded image."""
  assert transforms.short_side_size(375, 500, 520) == (520, 693)
  assert transforms.short_side_size(500, 333, 520) == (781, 520)
  assert transforms.short_side_size(40, 40, 20) == (20, 20)
  assert transforms.testval_fit(375, 500, 520, 8) == ((520, 693), (520, 696))
  config = config_lib.base_config()
  config.eval.combine, config.eval.mode, config.eval.scales = 'hrnet_520', 'slide', (0.75, 1.0)
  config.eval.short_side, config.eval.fit_stride = 20, 8
  config.data.base_size, config.data.eval_size, config.data.eval_label_size = 20, (24, 40), (40, 40)
  preprocess = transforms.EvalPreprocess.from_config(config.data, config.eval)
  image = np.full((29, 37, 3), 7, np.uint8)
  out = preprocess.map({'image': image, 'label': np.zeros((29, 37), np.uint8)})
  assert out['image'].shape == (24, 40, 3) and (out['image'][:20, :26] == 7).all()
  assert (out['image'][20:24, :32] == (124, 116, 104)).all() and (out['image'][:, 32:] == 0).all()
  np.testing.assert_array_equal(out['image_size'], [20, 26])
  np.testing.assert_array_equal(out['original_size'], [29, 37])
  np.testing.assert_array_equal(out['scale_sizes'], [[11, 15], [15, 20]])  # of the padded 24x32
  assert out['label'].shape == (40, 40)
  with pytest.raises(datasets.DataError, match=r'32x24 \(HxW\) resized to short side 20 and padded to a multiple of '
                     r'8.*set --config.data.eval_size'):
    preprocess.map({'image': np.zeros((37, 29, 3), np.uint8)})  # 32x24 after the padding: taller than 24
