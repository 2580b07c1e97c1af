"""Evaluation protocols written as each reference writes its own loop: one image, one scale and one window at a time
(mmseg EncoderDecoder.slide_inference + SegTTAModel, HRNet Cityscapes.multi_scale_inference, HRNet-OCR's 520-pixel
testval (resize_short_length + BaseDataset.multi_scale_inference + testval), PyTorch-Encoding MultiEvalModule).
tests/test_eval_protocols.py checks ctxseg_jax's batched protocols against them, and bench/evaluation.py times them
as the `direct_loop` implementation.

Each loop takes `logits(pixels, align_corners)`: the model on one float32 (h, w, 3) window of pixel values, its
logits resized to the window, as numpy (K = num_classes channels last); and a config whose `eval` and
`data.base_size` name the protocol. Images are uint8 (H, W, 3) originals; results are float (H, W, K) scores.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ctxseg_jax.data import transforms
from ctxseg_jax.models.layers.resize import resize_bilinear


def resize(array, size, align_corners=False):
  """Bilinear resize of one (h, w, C) array (PyTorch's F.interpolate semantics)."""
  return np.asarray(resize_bilinear(jnp.asarray(array, jnp.float32)[None], size, align_corners)[0])


def mmseg_loop(logits, config, image, num_classes):
  """mmseg: Resize(keep_ratio) per scale, slide_inference (or whole_inference: one window of the image's size) on
  the (flipped) image, each entry resized to the original, softmax averaged over the entries when there are
  several."""
  entries = []
  for scale in config.eval.scales:
    size = (int(image.shape[0] * scale + 0.5), int(image.shape[1] * scale + 0.5))
    resized = resize(image, size)
    (ch, cw), (sh, sw) = (size, size) if config.eval.mode == 'whole' else (config.eval.crop_size, config.eval.stride)
    for flip in ((False, True) if config.eval.flip else (False,)):
      x = resized[:, ::-1] if flip else resized
      height, width = x.shape[:2]
      preds, count = np.zeros((height, width, num_classes)), np.zeros((height, width, 1))
      for h_idx in range(max(height - ch + sh - 1, 0) // sh + 1):
        for w_idx in range(max(width - cw + sw - 1, 0) // sw + 1):
          y1, x1 = h_idx * sh, w_idx * sw
          y2, x2 = min(y1 + ch, height), min(x1 + cw, width)
          y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
          preds[y1:y2, x1:x2] += logits(x[y1:y2, x1:x2], False)
          count[y1:y2, x1:x2] += 1
      averaged = preds / count
      entries.append(resize(averaged[:, ::-1] if flip else averaged, image.shape[:2]))
  if len(entries) == 1:
    return entries[0]
  return np.mean([np.asarray(jax.nn.softmax(jnp.asarray(e), axis=-1)) for e in entries], axis=0)


def hrnet_loop(logits, config, image, num_classes):
  """HRNet multi_scale_inference: long side to base_size x scale, whole image for scales <= 1, windows otherwise;
  per pass exp of the (flip-averaged) logits; summed over scales after resizing to the original."""
  (ch, cw), (sh, sw) = config.eval.crop_size, config.eval.stride

  def infer(x):
    pred = logits(x, False)
    if config.eval.flip:
      pred = (pred + logits(x[:, ::-1], False)[:, ::-1]) * 0.5
    return np.exp(pred)

  final = 0
  for scale in config.eval.scales:
    long_size = int(config.data.base_size * scale + 0.5)
    h, w = image.shape[:2]
    size = (long_size, int(w * long_size / h + 0.5)) if h > w else (int(h * long_size / w + 0.5), long_size)
    x = resize(image, size)
    if scale <= 1.0:
      preds = infer(x)
    else:
      new_h, new_w = size
      preds, count = np.zeros((new_h, new_w, num_classes)), np.zeros((new_h, new_w, 1))
      for r in range(int(np.ceil((new_h - ch) / sh)) + 1):
        for c in range(int(np.ceil((new_w - cw) / sw)) + 1):
          h0, w0 = r * sh, c * sw
          h1, w1 = min(h0 + ch, new_h), min(w0 + cw, new_w)
          h0, w0 = max(int(h1 - ch), 0), max(int(w1 - cw), 0)
          preds[h0:h1, w0:w1] += infer(x[h0:h1, w0:w1])
          count[h0:h1, w0:w1] += 1
      preds = preds / count
    final = final + resize(preds, image.shape[:2])
  return final


def hrnet_520_loop(logits, config, image, num_classes):
  """HRNet-OCR testval on ADE20K / PASCAL-Context / COCO-Stuff. The dataset item: the image resized (uint8, OpenCV
  INTER_LINEAR, here transforms.resize_linear) to short side eval.short_side, padded bottom/right with the mean
  colour to a multiple of eval.fit_stride. multi_scale_inference on it: per scale the long side to base_size x
  scale; an image that fits the crop runs once padded to it with black, else it is padded to at least the crop and
  windows start at multiples of the stride (crop x 2/3 there), the last ones cut at the border and padded to the
  crop with black; per window exp of the (flip-averaged) logits; the per-scale map resized to the padded image and
  summed. testval: the fit padding cropped (eval.crop_fit_padding), then resized to the label. Every logit resize
  uses eval.align_corners."""
  (ch, cw), (sh, sw) = config.eval.crop_size, config.eval.stride
  align_corners = config.eval.align_corners

  def pad(x, size, value):
    out = np.empty((max(size[0], x.shape[0]), max(size[1], x.shape[1]), 3), np.float32)
    out[...] = value
    out[:x.shape[0], :x.shape[1]] = x
    return out

  def infer(x):
    pred = logits(x, align_corners)
    if config.eval.flip:
      pred = (pred + logits(x[:, ::-1], align_corners)[:, ::-1]) * 0.5
    return np.exp(pred)

  h, w = image.shape[:2]
  short = config.eval.short_side
  if short:
    resized = (short, int(w * short / h + 0.5)) if h < w else (int(h * short / w + 0.5), short)
    image = transforms.resize_linear(image, resized)
  stride = config.eval.fit_stride
  fitted = tuple(-(-s // stride) * stride for s in image.shape[:2])
  content = image.shape[:2]
  image = pad(image, fitted, np.rint(np.asarray(config.data.mean)))
  ori_h, ori_w = image.shape[:2]
  final = 0
  for scale in config.eval.scales:
    long_size = int(config.data.base_size * scale + 0.5)
    if ori_h > ori_w:
      height, width = long_size, int(ori_w * long_size / ori_h + 0.5)
    else:
      height, width = int(ori_h * long_size / ori_w + 0.5), long_size
    x = resize(image, (height, width))
    if max(height, width) <= min(ch, cw):
      preds = infer(pad(x, (ch, cw), 0))[:height, :width]
    else:
      x = pad(x, (ch, cw), 0)
      new_h, new_w = x.shape[:2]
      preds, count = np.zeros((new_h, new_w, num_classes)), np.zeros((new_h, new_w, 1))
      for r in range(int(np.ceil((new_h - ch) / sh)) + 1):
        for c in range(int(np.ceil((new_w - cw) / sw)) + 1):
          h0, w0 = r * sh, c * sw
          h1, w1 = min(h0 + ch, new_h), min(w0 + cw, new_w)
          pred = infer(pad(x[h0:h1, w0:w1], (ch, cw), 0))
          preds[h0:h1, w0:w1] += pred[:h1 - h0, :w1 - w0]
          count[h0:h1, w0:w1] += 1
      preds = (preds / count)[:height, :width]
    final = final + resize(preds, (ori_h, ori_w), align_corners)
  if config.eval.crop_fit_padding:
    final = final[:content[0], :content[1]]
  if final.shape[:2] != (h, w):
    final = resize(final, (h, w), align_corners)
  return final


def pte_loop(logits, config, image, num_classes):
  """PyTorch-Encoding MultiEvalModule: long side ceil(base_size x scale) (align_corners resizes), padded to the
  crop with black, windows at multiples of the stride padded to the crop, exp of (logits + mirrored logits)."""
  crop, stride = config.eval.crop_size[0], config.eval.stride[0]

  def pad(x):
    out = np.zeros((max(crop, x.shape[0]), max(crop, x.shape[1]), 3), np.float32)
    out[:x.shape[0], :x.shape[1]] = x
    return out

  def module_inference(x):
    output = logits(x, True)
    if config.eval.flip:
      output = output + logits(x[:, ::-1], True)[:, ::-1]
    return np.exp(output)

  h, w = image.shape[:2]
  scores = 0
  for scale in config.eval.scales:
    long_size = int(math.ceil(config.data.base_size * scale))
    if h > w:
      height, width, short_size = long_size, int(1.0 * w * long_size / h + 0.5), int(1.0 * w * long_size / h + 0.5)
    else:
      height, width, short_size = int(1.0 * h * long_size / w + 0.5), long_size, int(1.0 * h * long_size / w + 0.5)
    current = resize(image, (height, width), True)
    if long_size <= crop:
      outputs = module_inference(pad(current))[:height, :width]
    else:
      padded = pad(current) if short_size < crop else current
      ph, pw = padded.shape[:2]
      outputs, count = np.zeros((ph, pw, num_classes)), np.zeros((ph, pw, 1))
      for idh in range(int(math.ceil(1.0 * (ph - crop) / stride)) + 1):
        for idw in range(int(math.ceil(1.0 * (pw - crop) / stride)) + 1):
          h0, w0 = idh * stride, idw * stride
          h1, w1 = min(h0 + crop, ph), min(w0 + crop, pw)
          output = module_inference(pad(padded[h0:h1, w0:w1]))
          outputs[h0:h1, w0:w1] += output[:h1 - h0, :w1 - w0]
          count[h0:h1, w0:w1] += 1
      outputs = (outputs / count)[:height, :width]
    scores = scores + resize(outputs, (h, w), True)
  return scores


LOOPS = {'mmseg': mmseg_loop, 'hrnet': hrnet_loop, 'hrnet_520': hrnet_520_loop, 'pte': pte_loop}
