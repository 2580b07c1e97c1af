"""Evaluation protocols (sliding windows, multi-scale, flip; mmseg, HRNet and PyTorch-Encoding combination) against
direct loops written the way each reference writes its own: one image, one scale and one window at a time."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import experiment, inference
from ctxseg_jax.data import transforms
from ctxseg_jax.models.layers.resize import resize_bilinear
from ctxseg_jax.ops import sliding_window
from tests.tiny_config import get_config

CANVAS = (40, 40)
NUM_CLASSES = 8  # the synthetic dataset of tests/tiny_config.py


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


def _setup(combine, scales, flip, mode='slide'):
  config = get_config()
  config.eval.combine, config.eval.mode, config.eval.scales, config.eval.flip = combine, mode, scales, flip
  config.eval.crop_size, config.eval.stride = (16, 16), (11, 11)
  config.eval.windows_per_pass = 6
  config.data.eval_size = CANVAS
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


def _logits(exp, variables, config, pixels, align_corners):
  """The model on one float (h, w, 3) pixel window, its logits resized to the window."""
  x = inference.normalize(jnp.asarray(pixels)[None], config.data.mean, config.data.std)
  logits = exp.model.apply(variables, x, train=False)['logits']
  return np.asarray(resize_bilinear(logits, pixels.shape[:2], align_corners)[0])


def _resize(array, size, align_corners=False):
  return np.asarray(resize_bilinear(jnp.asarray(array, jnp.float32)[None], size, align_corners)[0])




def _mmseg_direct(exp, variables, config, image):
  """mmseg: Resize(keep_ratio) per scale, slide_inference (or whole_inference: one window of the image's size) on
  the (flipped) image, each entry resized to the original, softmax averaged over the entries when there are
  several."""
  entries = []
  for scale in config.eval.scales:
    size = (int(image.shape[0] * scale + 0.5), int(image.shape[1] * scale + 0.5))
    resized = _resize(image, size)
    (ch, cw), (sh, sw) = (size, size) if config.eval.mode == 'whole' else (config.eval.crop_size, config.eval.stride)
    for flip in ((False, True) if config.eval.flip else (False,)):
      x = resized[:, ::-1] if flip else resized
      height, width = x.shape[:2]
      preds, count = np.zeros((height, width, NUM_CLASSES)), np.zeros((height, width, 1))
      for h_idx in range(max(height - ch + sh - 1, 0) // sh + 1):
        for w_idx in range(max(width - cw + sw - 1, 0) // sw + 1):
          y1, x1 = h_idx * sh, w_idx * sw
          y2, x2 = min(y1 + ch, height), min(x1 + cw, width)
          y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
          preds[y1:y2, x1:x2] += _logits(exp, variables, config, x[y1:y2, x1:x2], False)
          count[y1:y2, x1:x2] += 1
      logits = preds / count
      entries.append(_resize(logits[:, ::-1] if flip else logits, image.shape[:2]))
  if len(entries) == 1:
    return entries[0]
  return np.mean([np.asarray(jax.nn.softmax(jnp.asarray(e), axis=-1)) for e in entries], axis=0)


def _hrnet_direct(exp, variables, config, image):
  """HRNet multi_scale_inference: long side to base_size x scale, whole image for scales <= 1, windows otherwise;
  per pass exp of the (flip-averaged) logits; summed over scales after resizing to the original."""
  (ch, cw), (sh, sw) = config.eval.crop_size, config.eval.stride

  def infer(x):
    logits = _logits(exp, variables, config, x, False)
    if config.eval.flip:
      logits = (logits + _logits(exp, variables, config, x[:, ::-1], False)[:, ::-1]) * 0.5
    return np.exp(logits)

  final = 0
  for scale in config.eval.scales:
    long_size = int(config.data.base_size * scale + 0.5)
    h, w = image.shape[:2]
    size = (long_size, int(w * long_size / h + 0.5)) if h > w else (int(h * long_size / w + 0.5), long_size)
    x = _resize(image, size)
    if scale <= 1.0:
      preds = infer(x)
    else:
      new_h, new_w = size
      preds, count = np.zeros((new_h, new_w, NUM_CLASSES)), np.zeros((new_h, new_w, 1))
      for r in range(int(np.ceil((new_h - ch) / sh)) + 1):
        for c in range(int(np.ceil((new_w - cw) / sw)) + 1):
          h0, w0 = r * sh, c * sw
          h1, w1 = min(h0 + ch, new_h), min(w0 + cw, new_w)
          h0, w0 = max(int(h1 - ch), 0), max(int(w1 - cw), 0)
          preds[h0:h1, w0:w1] += infer(x[h0:h1, w0:w1])
          count[h0:h1, w0:w1] += 1
      preds = preds / count
    final = final + _resize(preds, image.shape[:2])
  return final


def _pte_direct(exp, variables, config, image):
  """PyTorch-Encoding MultiEvalModule: long side ceil(base_size x scale) (align_corners resizes), padded to the
  crop with black, windows at multiples of the stride padded to the crop, exp of (logits + mirrored logits)."""
  crop, stride = config.eval.crop_size[0], config.eval.stride[0]

  def pad(x):
    out = np.zeros((max(crop, x.shape[0]), max(crop, x.shape[1]), 3), np.float32)
    out[:x.shape[0], :x.shape[1]] = x
    return out

  def module_inference(x):
    logits = _logits(exp, variables, config, x, True)
    if config.eval.flip:
      logits = logits + _logits(exp, variables, config, x[:, ::-1], True)[:, ::-1]
    return np.exp(logits)

  h, w = image.shape[:2]
  scores = 0
  for scale in config.eval.scales:
    long_size = int(math.ceil(config.data.base_size * scale))
    if h > w:
      height, width, short_size = long_size, int(1.0 * w * long_size / h + 0.5), int(1.0 * w * long_size / h + 0.5)
    else:
      height, width, short_size = int(1.0 * h * long_size / w + 0.5), long_size, int(1.0 * h * long_size / w + 0.5)
    current = _resize(image, (height, width), True)
    if long_size <= crop:
      outputs = module_inference(pad(current))[:height, :width]
    else:
      padded = pad(current) if short_size < crop else current
      ph, pw = padded.shape[:2]
      outputs, count = np.zeros((ph, pw, NUM_CLASSES)), np.zeros((ph, pw, 1))
      for idh in range(int(math.ceil(1.0 * (ph - crop) / stride)) + 1):
        for idw in range(int(math.ceil(1.0 * (pw - crop) / stride)) + 1):
          h0, w0 = idh * stride, idw * stride
          h1, w1 = min(h0 + crop, ph), min(w0 + crop, pw)
          output = module_inference(pad(padded[h0:h1, w0:w1]))
          outputs[h0:h1, w0:w1] += output[:h1 - h0, :w1 - w0]
          count[h0:h1, w0:w1] += 1
      outputs = (outputs / count)[:height, :width]
    scores = scores + _resize(outputs, (h, w), True)
  return scores


DIRECT = {'mmseg': _mmseg_direct, 'hrnet': _hrnet_direct, 'pte': _pte_direct}


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
    expected = DIRECT[combine](exp, variables, config, image)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize('combine', ['mmseg', 'hrnet'])
def test_whole_image_scales_equal_the_reference_loop_when_the_canvas_is_the_image(combine):
  """One 40x40 image, scales whose sizes fill their canvases: the whole-image passes see no padding."""
  config, exp, variables = _setup(combine, (0.5, 1.0), True, mode='whole')
  image = _images([CANVAS], seed=1)[0]
  got = _ours(config, exp, variables, [image])[0]
  expected = DIRECT[combine](exp, variables, config, image)
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
