"""The one path from images to class scores: the eval step, predictions and `--mode summary`'s FLOP count.

A classifier (a classification dataset) scores each whole image once: `classify`. A segmentor:

Two routes, by `transforms.resizes_on_device(config.eval)`:
- Single-scale whole-image inference (eval.mode 'whole', scales (1.0,), no flip; the default): the host resized
  each image to data.eval_scale; one forward pass over the padded batch (`predict_logits`), logits resized to the
  input and each image's region back to its original size (`logits_at_original_size`).
- The evaluation protocols (`protocol_scores`): the batch holds the originals ('hrnet_520': the testval images);
  for each of eval.scales the device resizes every image to its size at that scale, runs it whole or in sliding
  windows (eval.mode, eval.crop_size, eval.stride), optionally flipped (eval.flip), and combines as the reference
  named by eval.combine does:
    'mmseg'  (EncoderDecoder + SegTTAModel): windows 'shift'-placed, their logits summed and divided by the count;
             each (scale, flip) map resized to the original size; with more than one, softmax averaged.
    'hrnet'  (Cityscapes.multi_scale_inference): per window exp of the logits (with flip: of the mean of the
             window's and its mirror's logits); windows 'shift'-placed with stride eval.stride, but scales <= 1 run
             the whole image; summed over scales after resizing to the original size (eval.align_corners).
    'hrnet_520' (HRNet-OCR's ADE20K / PASCAL-Context / COCO-Stuff testval): the host makes the testval image
             (transforms.testval_fit: short side eval.short_side, OpenCV-like resize, padded with the mean colour
             to a multiple of eval.fit_stride); each scale resizes that padded image (long side data.base_size x
             scale); windows 'pad'-placed (padding of data.image_pad_value: black), so that a scale whose long side
             fits the crop runs once, padded to the crop; per window exp of the mean of the logits and the
             mirror's, as 'hrnet'; each scale's map resized to the padded testval size and summed; the sum
             (its fit padding cropped first with eval.crop_fit_padding) resized to the original size; all logit
             resizes with eval.align_corners.
    'pte'    (PyTorch-Encoding MultiEvalModule): per window exp of the logits (with flip: of their sum with the
             mirror's); windows 'pad'-placed (padding of data.image_pad_value); images resized with align_corners
             True, as every resize of that protocol is; summed over scales.
  All windows of all images of one scale run as batched forward passes of eval.windows_per_pass windows (a
  `lax.scan` in the one compiled eval program), with static shapes: every image gets the most windows any image of
  the scale's canvas needs, its own first and the surplus weighted 0 (ops.sliding_window); a pass in which no
  image has a window of its own is skipped.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ctxseg_jax.data import transforms
from ctxseg_jax.models.layers.resize import resize_bilinear_regions
from ctxseg_jax.models.layers.valid_region import ValidRegion, resize_within
from ctxseg_jax.models.segmentor import Segmentor, classifier_input
from ctxseg_jax.ops import sliding_window

MODES = ('whole', 'slide')  # 'whole': the whole (padded) image in one forward pass; 'slide': crop-sized windows
COMBINES = transforms.SCALE_RULES
PLACEMENTS = {'mmseg': 'shift', 'hrnet': 'shift', 'hrnet_520': 'pad', 'pte': 'pad'}  # window placement per combine


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 (or float pixel-valued) (B, H, W, 3) -> float32 (x - mean) / std."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) - mean) / std


def classify(variables: dict, images: jax.Array, *, model: Segmentor, config: ml_collections.ConfigDict) -> jax.Array:
  """uint8 (B, H, W, 3) images -> float32 logits (B, K) of a classifier (image-level 'logits'): one forward pass."""
  return model.apply(variables, normalize(images, config.data.mean, config.data.std), train=False)['logits']


def predict_logits(variables: dict, images: jax.Array, *, model: Segmentor,
                   config: ml_collections.ConfigDict) -> jax.Array:
  """uint8 (B, H, W, 3) images -> float32 logits (B, H, W, K) at input resolution: one whole-image forward pass."""
  return predict_logits_and_features(variables, images, model=model, config=config, features=False)[0]


def image_region(image_size: jax.Array, config: ml_collections.ConfigDict) -> jax.Array | None:
  """The valid_size of a forward pass over padded images (`predict_logits_and_features`, Segmentor): each image's
  (h, w), int (B, 2), with eval.image_regions, else None (the whole padded input)."""
  return image_size if config.eval.image_regions else None


def logits_at_input_size(logits: jax.Array, input_shape: tuple[int, int], valid_size: jax.Array | None,
                         align_corners: bool) -> jax.Array:
  """(B, h, w, K) logits -> (B, *input_shape, K), bilinear: the whole map to the whole input, or with valid_size
  (int (B, 2)) each image's region of the map to its region of the input, as the image alone at its own size
  would be resized (layers.valid_region.resize_within; the rest of the output is padding)."""
  valid = None if valid_size is None else ValidRegion(valid_size, input_shape)
  return resize_within(logits, input_shape, valid, align_corners)


def predict_logits_and_features(variables: dict, images: jax.Array, *, model: Segmentor,
                                config: ml_collections.ConfigDict, features: bool = True,
                                valid_size: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
  """`predict_logits`, and with `features` the whole images' features before the classifier, (B, h, w, C) at the
  head's stride (segmentor.classifier_input), else None. valid_size: see Segmentor."""
  inputs = normalize(images, config.data.mean, config.data.std)
  if features:
    outputs, state = model.apply(variables, inputs, train=False, valid_size=valid_size, mutable=['intermediates'])
    recorded = classifier_input(model, state['intermediates'])
  else:
    outputs, recorded = model.apply(variables, inputs, train=False, valid_size=valid_size), None
  return logits_at_input_size(outputs['logits'], images.shape[1:3], valid_size, config.eval.align_corners), recorded


def logits_at_original_size(logits: jax.Array, image_size: jax.Array, original_size: jax.Array,
                            out_shape: tuple[int, int], config: ml_collections.ConfigDict) -> jax.Array:
  """Each image's logits resized back to its original size.

  Args:
    logits: (B, H, W, K) at the (padded) input resolution.
    image_size: int (B, 2), the size of each image's region inside the input (after the eval resize).
    original_size: int (B, 2), each image's original size.
    out_shape: (Lh, Lw) >= every original size; the result is padded to it.
  Returns:
    (B, Lh, Lw, K): bilinear (eval.align_corners) from each region to its original size. Without an eval resize
    and with out_shape equal to the input shape, the logits are returned unchanged.
  """
  if any(config.data.eval_scale) or tuple(out_shape) != logits.shape[1:3]:
    return resize_bilinear_regions(logits, image_size, original_size, out_shape, config.eval.align_corners)
  return logits


class ClassifierFeatures(NamedTuple):
  """Features before the classifier from one whole-image forward pass, and where the images lay in its input.

  features: (B, h, w, C). image_size: int (B, 2), each image's size inside the input. input_shape: (H, W).
  """
  features: jax.Array
  image_size: jax.Array
  input_shape: tuple[int, int]


def scores_at_original_size(variables: dict, batch: dict[str, jax.Array], out_shape: tuple[int, int], *,
                             model: Segmentor, config: ml_collections.ConfigDict,
                             features: bool = False) -> tuple[jax.Array, ClassifierFeatures | None]:
  """Class scores (B, *out_shape, K) of an eval batch {'image', 'image_size', 'original_size', ...} at each image's
  original resolution (padded to out_shape), by config.eval (the two routes of the module docstring), and with
  `features` the features before the classifier (predict_logits_and_features) of the whole image: the eval
  image's own forward pass on the single-scale route; on the protocol route, an extra pass at scale 1.0."""
  if transforms.resizes_on_device(config.eval):
    scores = protocol_scores(variables, batch, out_shape, model=model, config=config)
    if not features:
      return scores, None
    sizes = batch['scale_sizes'][:, list(config.eval.scales).index(1.0)]
    shape = transforms.scale_canvas(config.data.eval_size, 1.0, config.eval.combine, config.data.base_size)
    images = scaled_images(batch['image'], source_size(batch, config), sizes, shape, config)
    _, recorded = predict_logits_and_features(variables, images, model=model, config=config,
                                              valid_size=image_region(sizes, config))
    return scores, ClassifierFeatures(recorded, sizes, shape)
  logits, recorded = predict_logits_and_features(variables, batch['image'], model=model, config=config,
                                                 features=features,
                                                 valid_size=image_region(batch['image_size'], config))
  scores = logits_at_original_size(logits, batch['image_size'], batch['original_size'], out_shape, config)
  if not features:
    return scores, None
  return scores, ClassifierFeatures(recorded, batch['image_size'], batch['image'].shape[1:3])


def protocol_scores(variables: dict, batch: dict[str, jax.Array], out_shape: tuple[int, int], *, model: Segmentor,
                    config: ml_collections.ConfigDict) -> jax.Array:
  """Class scores (B, *out_shape, K) at each image's original size, by the protocol of config.eval (module
  docstring), from a batch of originals {'image': uint8 (B, Lh, Lw, 3), 'image_size' = 'original_size': int
  (B, 2), 'scale_sizes': int (B, S, 2)} (transforms.EvalPreprocess with config.eval); for 'hrnet_520', 'image'
  holds the testval images (B, *data.eval_size, 3) and 'image_size' their sizes before the fit padding."""
  settings = config.eval
  combine = settings.combine
  align_corners = True if combine == 'pte' else settings.align_corners
  image_flips = (False, True) if combine == 'mmseg' and settings.flip else (False,)
  entries = len(settings.scales) * len(image_flips)
  source = source_size(batch, config)
  # Where each scale's map goes: the original size, or ('hrnet_520') the padded testval size first.
  testval = combine == 'hrnet_520'
  target, target_shape = (source, tuple(config.data.eval_size)) if testval else (batch['original_size'], out_shape)
  total = None
  for index, scale in enumerate(settings.scales):
    sizes = batch['scale_sizes'][:, index]
    whole = settings.mode == 'whole' or (combine == 'hrnet' and scale <= 1)
    canvas = transforms.scale_canvas(config.data.eval_size, scale, combine, config.data.base_size)
    crop = canvas if whole else tuple(settings.crop_size)
    stride = canvas if whole else tuple(settings.stride)
    placement = PLACEMENTS[combine]
    extent = tuple(sliding_window.extent(canvas[a], crop[a], stride[a], placement) for a in (0, 1))
    pixels = scaled_images(batch['image'], source, sizes, extent, config)
    for flipped in image_flips:
      images = sliding_window.flip_regions(pixels, sizes[:, 1]) if flipped else pixels
      scores = window_scores(variables, normalize(images, config.data.mean, config.data.std), sizes, canvas, crop,
                             stride, placement, model=model, config=config)
      if flipped:
        scores = sliding_window.flip_regions(scores, sizes[:, 1])
      scores = resize_bilinear_regions(scores, sizes, target, target_shape, align_corners)
      if combine == 'mmseg' and entries > 1:
        scores = jax.nn.softmax(scores, axis=-1)
      total = scores if total is None else total + scores
  if testval:
    return testval_scores_at_original_size(total, batch, out_shape, config)
  return total / entries if combine == 'mmseg' else total


def source_size(batch: dict[str, jax.Array], config: ml_collections.ConfigDict) -> jax.Array:
  """int (B, 2): the top-left region of batch['image'] that each scale resizes, the original image or, for
  'hrnet_520', the testval image with its fit padding (batch['image_size'] rounded up to eval.fit_stride)."""
  if config.eval.combine == 'hrnet_520':
    return transforms.fit_size(batch['image_size'], config.eval.fit_stride)
  return batch['original_size']


def testval_scores_at_original_size(scores: jax.Array, batch: dict[str, jax.Array], out_shape: tuple[int, int],
                                    config: ml_collections.ConfigDict) -> jax.Array:
  """'hrnet_520' (HRNet-OCR testval after multi_scale_inference): (B, *data.eval_size, K) scores at each padded
  testval size (`source_size`) -> (B, *out_shape, K) at each original size, bilinear (eval.align_corners); with
  eval.crop_fit_padding (COCO-Stuff's border_padding) from the region before the fit padding."""
  region = batch['image_size'] if config.eval.crop_fit_padding else source_size(batch, config)
  return resize_bilinear_regions(scores, region, batch['original_size'], out_shape, config.eval.align_corners)


def scaled_images(images: jax.Array, original_size: jax.Array, sizes: jax.Array, shape: tuple[int, int],
                  config: ml_collections.ConfigDict) -> jax.Array:
  """Each original image (top-left original_size of uint8 `images`) resized bilinearly to its `sizes` at the
  top-left of a float32 (B, *shape, 3) canvas of pixel values, the rest data.image_pad_value.

  'mmseg' and the 'hrnet' rules sample as OpenCV's INTER_LINEAR does (half-pixel centres, no antialiasing), 'pte' with
  align_corners True, as it resizes its normalised tensors. Values stay float32: OpenCV's uint8 result is rounded
  (in its own fixed point), within half a grey level of these. (Rounding here would not bring them closer, and
  would turn float32 rounding differences between equivalent formulations into whole grey levels at .5 ties.)"""
  pte = config.eval.combine == 'pte'
  resized = resize_bilinear_regions(images.astype(jnp.float32), original_size, sizes, shape, align_corners=pte)
  rows = jnp.arange(shape[0])[None, :, None] < sizes[:, :1, None]
  cols = jnp.arange(shape[1])[None, None, :] < sizes[:, 1:, None]
  pad = jnp.asarray(config.data.image_pad_value, jnp.float32)
  return jnp.where((rows & cols)[..., None], resized, pad)


def window_scores(variables: dict, images: jax.Array, sizes: jax.Array, canvas: tuple[int, int],
                  crop: tuple[int, int], stride: tuple[int, int], placement: str, *, model: Segmentor,
                  config: ml_collections.ConfigDict) -> jax.Array:
  """Per pixel, the mean over the windows covering it of each window's scores (`_window_transform`).

  Args:
    images: (B, E_h, E_w, 3) normalised, each image top-left at its `sizes` inside a canvas of `canvas`, padded
      to the extent E of the windows (sliding_window.extent).
    sizes: int (B, 2).
  Returns:
    (B, E_h, E_w, K) float32, 0 where no window of the image reaches.
  """
  starts, valid = sliding_window.grid(sizes, canvas, crop, stride, placement)
  # Each image's own windows first, so that passes past every image's last window are skipped.
  order = jnp.argsort(~valid, axis=1, stable=True)
  starts, valid = jnp.take_along_axis(starts, order[..., None], axis=1), jnp.take_along_axis(valid, order, axis=1)
  batch, count = valid.shape
  per_pass = max(1, min(count, config.eval.windows_per_pass // batch))
  groups = -(-count // per_pass)
  padding = groups * per_pass - count
  starts = jnp.pad(starts, ((0, 0), (0, padding), (0, 0)))
  valid = jnp.pad(valid, ((0, 0), (0, padding)))
  # The part of each window inside the image, (B, n, 2): the image itself when it runs whole. 'shift' windows
  # are mirrored in place over it (flip_regions) and, like the references' windows cut at the image's border,
  # are scored from it alone (eval.image_regions); 'pad' windows are whole crops of the padded image.
  if placement == 'shift':
    window_sizes = jnp.clip(sizes[:, None, :] - starts, 1, jnp.asarray(crop))
  else:
    window_sizes = jnp.broadcast_to(jnp.asarray(crop), starts.shape)

  def one_pass(total, group):
    group_starts, group_valid, group_sizes = group  # (B, k, 2), (B, k), (B, k, 2)

    def run(total):
      windows = sliding_window.gather_windows(images, group_starts, crop)  # (B, k, h, w, 3)
      valid_size = image_region(group_sizes.reshape(-1, 2), config) if placement == 'shift' else None
      scores = _window_transform(variables, windows.reshape(-1, *crop, 3), group_sizes.reshape(-1, 2)[:, 1],
                                 valid_size, model=model, config=config)
      scores = scores.reshape(*windows.shape[:2], *crop, -1)
      counted = jnp.concatenate([scores, jnp.ones_like(scores[..., :1])], axis=-1)
      return sliding_window.add_windows(total, counted, group_starts, group_valid)

    return jax.lax.cond(jnp.any(group_valid), run, lambda total: total, total), None

  grouped = [x.reshape(batch, groups, per_pass, *x.shape[2:]).swapaxes(0, 1) for x in (starts, valid, window_sizes)]
  num_classes = jax.eval_shape(lambda x: model.apply(variables, x, train=False)['logits'],
                               jax.ShapeDtypeStruct((1, *crop, 3), jnp.float32)).shape[-1]
  total = jnp.zeros((batch, *images.shape[1:3], num_classes + 1), jnp.float32)
  total, _ = jax.lax.scan(one_pass, total, grouped)
  counts = total[..., -1:]
  return jnp.where(counts > 0, total[..., :-1] / jnp.maximum(counts, 1), 0.0)


def _window_transform(variables: dict, windows: jax.Array, flip_widths: jax.Array, valid_size: jax.Array | None,
                      *, model: Segmentor, config: ml_collections.ConfigDict) -> jax.Array:
  """(P, h, w, 3) normalised windows -> (P, h, w, K) scores: 'mmseg' the logits; 'hrnet' and 'hrnet_520' exp of
  the logits (with eval.flip, of the mean of the window's and its mirror's logits); 'pte' the same with the sum.
  Logits are resized to the window bilinearly (align_corners: eval.align_corners, True for 'pte'). flip_widths int
  (P,): the width each window is mirrored over; valid_size: see Segmentor (int (P, 2) or None)."""
  combine = config.eval.combine
  align_corners = True if combine == 'pte' else config.eval.align_corners
  flip = config.eval.flip and combine != 'mmseg'
  inputs = jnp.concatenate([windows, sliding_window.flip_regions(windows, flip_widths)]) if flip else windows
  if flip and valid_size is not None:
    valid_size = jnp.concatenate([valid_size, valid_size])
  logits = logits_at_input_size(model.apply(variables, inputs, train=False, valid_size=valid_size)['logits'],
                                windows.shape[1:3], valid_size, align_corners)
  if combine == 'mmseg':
    return logits
  if flip:
    plain, mirrored = jnp.split(logits, 2)
    mirrored = sliding_window.flip_regions(mirrored, flip_widths)
    logits = plain + mirrored if combine == 'pte' else (plain + mirrored) / 2
  return jnp.exp(logits)
