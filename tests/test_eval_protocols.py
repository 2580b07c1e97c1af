"""Evaluation protocols (sliding windows, multi-scale, flip; mmseg, HRNet and PyTorch-Encoding combination) against
direct loops written the way each reference writes its own: one image, one scale and one window at a time."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import experiment, inference
from ctxseg_jax.data import transforms
from ctxseg_jax.models.layers.resize import resize_bilinear
from ctxseg_jax.ops import sliding_window
from bench import eval_reference
from tests.tiny_config import get_config

CANVAS = (40, 40)


def test_window_origins_follow_each_reference_loop():
  for size, crop, stride in [(30, 16, 11), (16, 16, 11), (10, 16, 11), (45, 16, 20), (33, 8, 8), (7, 4, 9)]:
    mmseg = []
    for i in range(max(size - crop + stride - 1, 0) // stride + 1):  # mmseg slide_inference
      end = min(i * stride + crop, size)
      mmseg.append(max(end - crop, 0))
    pte = [i * stride for i in range(math.ceil((max(size, crop) - crop) / stride) + 1)]  # MultiEvalModule
    for placement, expected in (('shift', mmseg), ('pad', pte)):
      count = sliding_window.window_count(60, crop, stride, placement)
      starts, valid = sliding_window.origins(jnp.asarray([size]), count, crop, stride, placement)
      assert list(np.asarray(starts[0])[np.asarray(valid[0])]) == expected, (placement, size, crop, stride)
      assert sliding_window.window_count(size, crop, stride, placement) == len(expected)
      assert max(expected) + crop <= sliding_window.extent(max(size, 1), crop, stride, placement)


def _setup(combine, scales, flip, mode='slide', eval_size=CANVAS, **eval_settings):
  config = get_config()
  config.eval.combine, config.eval.mode, config.eval.scales, config.eval.flip = combine, mode, scales, flip
  config.eval.crop_size, config.eval.stride = (16, 16), (11, 11)
  config.eval.windows_per_pass = 6
  config.eval.update(eval_settings)
  config.data.eval_size = eval_size
  config.data.eval_label_size = CANVAS
  config.data.base_size = 40
  config.data.image_pad_value = (0, 0, 0)
  exp = experiment.build(config, jax.devices()[:1])
  state = exp.init_state()
  return config, exp, {'params': state.params, 'batch_stats': state.batch_stats}


def _batch(config, images):
  preprocess = transforms.EvalPreprocess.from_config(config.data, config.eval)
  samples = [preprocess.map({'image': image, 'label': np.zeros(image.shape[:2], np.uint8)}) for image in images]
  return {key: jnp.asarray(np.stack([s[key] for s in samples])) for key in samples[0]}


def _ours(config, exp, variables, images):
  scores = jax.jit(lambda v, b: inference.protocol_scores(v, b, CANVAS, model=exp.model, config=config))(
      variables, _batch(config, images))
  return [np.asarray(scores[b, :image.shape[0], :image.shape[1]]) for b, image in enumerate(images)]


def _logits_fn(exp, variables, config):
  """The model on one float (h, w, 3) pixel window, its logits resized to the window (bench.eval_reference); jitted
  (one compilation per window shape), as the reference runs compiled kernels."""
  @functools.partial(jax.jit, static_argnums=1)
  def forward(pixels, align_corners):
    x = inference.normalize(pixels[None], config.data.mean, config.data.std)
    return resize_bilinear(exp.model.apply(variables, x, train=False)['logits'], pixels.shape[:2], align_corners)[0]
  return lambda pixels, align_corners: np.asarray(forward(jnp.asarray(pixels, jnp.float32), align_corners))


def _direct(combine, exp, variables, config, image):
  return eval_reference.LOOPS[combine](_logits_fn(exp, variables, config), config, image, exp.info.num_classes)





def _images(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, size=(*size, 3)).astype(np.uint8) for size in sizes]


# Images of odd sizes; for mmseg and HRNet every scaled image is at least a crop (mmseg runs a smaller window on a
# smaller image, and HRNet's whole-image scales would run a padded canvas: exact-shape scoring is not modelled here).
@pytest.mark.parametrize('combine, scales, sizes', [
    ('mmseg', (0.75, 1.0, 1.25), [(29, 37), (33, 26), (40, 31)]),
    ('hrnet', (1.25, 1.5), [(29, 37), (33, 26), (40, 31)]),
    ('pte', (0.25, 0.5, 1.0), [(29, 37), (33, 26), (12, 40)]),
])
@pytest.mark.parametrize('flip', [False, True], ids=['noflip', 'flip'])
def test_sliding_multi_scale_scores_equal_the_reference_loop(combine, scales, sizes, flip):
  config, exp, variables = _setup(combine, scales, flip)
  images = _images(sizes)
  ours = _ours(config, exp, variables, images)
  for image, got in zip(images, ours):
    expected = _direct(combine, exp, variables, config, image)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize('combine', ['mmseg', 'hrnet'])
def test_whole_image_scales_equal_the_reference_loop_when_the_canvas_is_the_image(combine):
  """One 40x40 image, scales whose sizes fill their canvases: the whole-image passes see no padding."""
  config, exp, variables = _setup(combine, (0.5, 1.0), True, mode='whole')
  image = _images([CANVAS], seed=1)[0]
  got = _ours(config, exp, variables, [image])[0]
  expected = _direct(combine, exp, variables, config, image)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


# HRNet-OCR's 520-pixel testval, scaled down: short side 20 (images padded to multiples of 8: 24x32, 32x24, 24x72),
# 16x16 windows every 10 (crop x 2/3). Long side 15 at scale 0.75 (fits the crop: one padded pass), 20 and 25 above
# (windows; the 24x72 image is 7x20 at scale 1, smaller than the crop in height).
@pytest.mark.parametrize('crop_fit_padding', [False, True], ids=['ade', 'coco'])
@pytest.mark.parametrize('flip', [False, True], ids=['noflip', 'flip'])
def test_hrnet_520_testval_scores_equal_the_reference_loop(crop_fit_padding, flip):
  config, exp, variables = _setup('hrnet_520', (0.75, 1.0, 1.25), flip, eval_size=(32, 72), crop_size=(16, 16),
                                  stride=(10, 10), short_side=20, fit_stride=8, crop_fit_padding=crop_fit_padding,
                                  align_corners=True)
  config.data.base_size = 20
  images = _images([(29, 37), (33, 26), (12, 40)], seed=3)
  ours = _ours(config, exp, variables, images)
  for image, got in zip(images, ours):
    expected = _direct('hrnet_520', exp, variables, config, image)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_hrnet_520_without_a_testval_resize_scores_the_original_like_the_reference_loop():
  """short_side 0, fit_stride 1: multi_scale_inference on the original image, align_corners False."""
  config, exp, variables = _setup('hrnet_520', (1.0, 1.5), True, crop_size=(16, 16), stride=(10, 10))
  config.data.base_size = 20
  images = _images([(29, 37), (17, 33)], seed=4)
  for image, got in zip(images, _ours(config, exp, variables, images)):
    expected = _direct('hrnet_520', exp, variables, config, image)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_flipped_whole_image_evaluation_is_mirror_symmetric():
  config, exp, variables = _setup('hrnet', (1.0,), True, mode='whole')
  image = _images([(31, 27)], seed=2)[0]
  plain, mirrored = _ours(config, exp, variables, [image, image[:, ::-1].copy()])
  np.testing.assert_allclose(plain, mirrored[:, ::-1], rtol=1e-5, atol=1e-6)


def test_scores_do_not_depend_on_windows_per_pass():
  config, exp, variables = _setup('mmseg', (1.0, 1.25), False)
  images = _images([(29, 37), (33, 26)])
  first = _ours(config, exp, variables, images)
  config.eval.windows_per_pass = 1
  for a, b in zip(first, _ours(config, exp, variables, images)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
