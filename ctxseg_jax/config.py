"""The configuration schema: every key a run reads, its default, and its validation.

Config files under `configs/` start from `base_config()`, which returns a *locked* ConfigDict: assigning a key
that does not exist (a typo in a config file or in a `--config.a.b=...` override) raises an error naming the key
and the valid ones. `validate(config)` then checks values (ranges, choices, divisibility) before anything runs.
Defaults follow the reference implementations (see the comments beside each key).
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

import ml_collections

from ctxseg_jax import inference, losses, metrics, models, optim
from ctxseg_jax.data import transforms
from ctxseg_jax.losses import TERMS
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import HEADS, aux_fcn_head

# ImageNet RGB mean/std in 0..255 pixel units, as every reference uses.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# Parameters outside the backbone: what PyTorch-Encoding trains at 10x the LR (its heads and auxiliary head).
HEADS_PATTERN = '^(?!backbone/)'


class ConfigError(ValueError):
  """A config key or value that cannot run, with a message naming the key and the fix."""


def base_config() -> ml_collections.ConfigDict:
  """Returns the full schema with reference defaults (mmseg FCN-R50-D8 style), locked against new keys."""
  c = ml_collections.ConfigDict()
  c.name = 'base'
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic_context'   # see ctxseg_jax.data.datasets.DATASETS
  c.data.root = ''                    # dataset folder (local or gs://), for datasets read from disk
  c.data.tfds_data_dir = ''           # data.name='cityscapes_tfds': where TFDS prepares the dataset
                                      # ('' = TFDS default); data.root is its manual_dir (the two zips)
  c.data.train_split = 'train'
  c.data.eval_split = 'val'
  c.data.base_size = 512              # random rescale is relative to this long side (PTE/HRNet) ...
  c.data.ratio_range = (0.5, 2.0)     # ... times a ratio drawn uniformly from this range
  c.data.ratio_step = 0.0             # > 0: the ratio is low + step * k, k uniform over the steps that fit (HRNet:
                                      # 0.5 + k / 10 for k in 0..16, i.e. ratio_range (0.5, 2.1), step 0.1)
  c.data.base_short_side = 0          # > 0: also cap the short side at base_short_side * ratio (mmseg keep-ratio
                                      # scale (base_size, base_short_side), e.g. ADE20K (2048, 512)); 0: long side only
  c.data.crop_size = (512, 512)       # (height, width) of training crops
  c.data.crop_padding = 0             # classification datasets: pixels of image_pad_value added on every side
                                      # before the random crop (CIFAR: 4, torchvision RandomCrop(32, padding=4))
  c.data.flip = True                  # random horizontal flip, p = 0.5
  c.data.cat_max_ratio = 1.0          # < 1: re-draw the crop (up to 10 times) while one class covers more than
                                      # this share of its labelled pixels (mmseg RandomCrop; 0.75 in its configs)
  c.data.photometric_distortion = False  # mmseg PhotoMetricDistortion after the flip (on in mmseg's configs)
  c.data.resize_antialias = True      # image resizes (train rescale, eval_scale): True PIL bilinear, antialiased when
                                      # shrinking (PyTorch-Encoding, HRNet); False OpenCV INTER_LINEAR-like (mmseg)
  c.data.eval_scale = (0, 0)          # (long, short): keep-ratio resize of eval images by
                                      # min(long / long side, short / short side) (mmseg Resize keep_ratio=True);
                                      # predictions are resized back and scored at the original resolution.
                                      # (0, 0): native resolution
  c.data.eval_size = (512, 512)       # (height, width): eval images (after eval_scale) are padded to this size
  c.data.eval_label_size = (0, 0)     # (height, width) that original-resolution eval labels are padded to;
                                      # (0, 0): eval_size. Only needed with eval_scale when originals are larger
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  c.data.image_pad_value = (0, 0, 0)  # RGB of padded image areas, before normalisation. PyTorch-Encoding pads raw
                                      # pixels with 0; mmseg pads normalised images with 0, i.e. the mean colour:
                                      # (124, 116, 104), the uint8 nearest to the ImageNet mean
  c.data.worker_count = 2             # grain worker processes per host (0: in the main process)
  c.data.worker_buffer_size = 2       # batches each worker (or the main process) prepares ahead, one per thread
  # Procedurally generated datasets (data.name = 'synthetic_context', 'synthetic_classification');
  # deterministic from (seed, index).
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.image_size = 96
  c.data.synthetic.num_train = 2000
  c.data.synthetic.num_val = 200
  c.data.synthetic.seed = 0

  # A backbone and named heads (see ctxseg_jax.models; each component's keys, defaults and valid values live with
  # it). Default: mmseg fcn_r50-d8, FCNHead on stage 4 + auxiliary FCNHead on stage 3.
  c.model = models.model_config(
      backbone=BACKBONES.config('resnet'),
      heads={'decode_head': HEADS.config('fcn', reads=(3,)),
             'aux_head': aux_fcn_head()})
  # Weighted loss terms over the model's outputs (see ctxseg_jax.losses).
  c.loss = losses.loss_config(
      ce=TERMS.config('cross_entropy'),
      aux=TERMS.config('cross_entropy', output='aux_logits', weight=0.4))  # mmseg 0.4; PyTorch-Encoding 0.2

  c.optim = ml_collections.ConfigDict()  # SGD + polynomial (or cosine) decay, stepped per iteration
  c.optim.schedule = 'poly'           # 'poly': (1 - t / T) ** poly_power; 'cosine': (1 + cos(pi t / T)) / 2
                                      # (PyTorch-Encoding's CIFAR-10 runs)
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4         # applied to every parameter (BN and biases included), as the references do
  c.optim.poly_power = 0.9
  c.optim.end_lr = 0.0                # floor of the polynomial decay (mmseg: 1e-4)
  c.optim.warmup_steps = 0            # linear warmup from warmup_ratio * lr
  c.optim.warmup_ratio = 0.1
  c.optim.lr_mults = ()               # ((regex, multiplier), ...): a parameter whose path ('decode_head/conv_seg/
                                      # kernel') matches a regex (re.search, first match wins) trains at that
                                      # multiple of the LR; others at 1. PyTorch-Encoding: ((HEADS_PATTERN, 10.0),)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 80_000
  c.train.batch_size = 16             # global batch, split over every device of every host
  c.train.log_every = 50
  c.train.eval_every = 8_000          # 0: evaluate only at the end
  c.train.checkpoint_every = 2_000
  c.train.keep_checkpoints = 3        # the last N are kept, plus the best by eval mIoU
  c.train.damaged_checkpoints = 'move'  # a checkpoint that cannot be restored when resuming: 'move' it to
                                      # <workdir>/checkpoints_damaged/ and resume from the newest one that
                                      # restores, or 'stop' with a message, leaving it in place (never deleted)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 16              # global
  c.eval.mode = 'whole'               # how images become scores (ctxseg_jax/inference.py): 'whole' image or
                                      # 'slide' (windows of crop_size every stride)
  c.eval.crop_size = (512, 512)       # (height, width) of the sliding windows
  c.eval.stride = (341, 341)          # (height, width) steps between windows
  c.eval.scales = (1.0,)              # multi-scale: factors of each protocol's scale-1 size (eval.combine)
  c.eval.flip = False                 # also the horizontally mirrored image, combined as eval.combine says
  c.eval.combine = 'mmseg'            # whose protocol: 'mmseg' (mean softmax over scales and flips), 'hrnet' (sum
                                      # of exp(logits), whole image at scales <= 1), 'hrnet_520' (HRNet-OCR's
                                      # ADE20K/PASCAL-Context/COCO-Stuff testval: as 'hrnet', of the image resized to
                                      # short side eval.short_side, windows padded), 'pte' (PyTorch-Encoding: sum of
                                      # exp(logits + mirrored logits), windows padded, align_corners True)
  c.eval.short_side = 0               # 'hrnet_520': the testval image's short side (0: the original image)
  c.eval.fit_stride = 1               # 'hrnet_520': the testval image padded (mean colour) to a multiple of this
  c.eval.crop_fit_padding = False     # 'hrnet_520': that padding cropped from the scores before their resize to
                                      # the original size (HRNet-OCR's COCO-Stuff), else resized with them
  c.eval.windows_per_pass = 16        # windows (of all images of the batch) per forward pass: bounds memory
  c.eval.image_regions = True         # in a padded batch, each image is scored as if alone at its own size (as the
                                      # references run it): convolutions and max pools see zeros past its border,
                                      # heads pool over its region (EncNet's Encoding layer, ASPP's image pooling,
                                      # OCR's region gather), logits are resized from it; False: the padding is
                                      # input. (Where a reference pads, PyTorch-Encoding's windows, it stays input.)
  c.eval.shape_bucket = 32            # single-scale whole-image evaluation: images of similar size are batched
                                      # together and padded only to their batch's largest size rounded up to a
                                      # multiple of this (one compiled program per such shape; keep it a multiple
                                      # of the output stride); 0: every image padded to data.eval_size (one shape)
  c.eval.align_corners = False        # corner convention of the logits' resizes (HRNet-OCR: True)
  c.eval.miou_convention = 'present'  # headline `miou`: 'present' (mean over classes present, mmseg) or
                                      # 'all' (mean over all classes, absent ones count 0: HRNet, PyTorch-Encoding)
  c.eval.boundary_px = ()             # boundary mIoU in trimaps of these widths (pixels) around label boundaries,
                                      # e.g. (3, 7, 10, 20) as Contextrast++ reports
  c.eval.feature_metrics = False      # also A, U and U_l of the features before the classifier (feature_metrics.py)
  c.eval.feature_samples = 256        # pixels sampled per class (seeded by config.seed) for A
  c.eval.feature_neighbours = 3       # l of U_l
  c.lock()
  return c


_CHOICES = {
    'eval.miou_convention': metrics.MIOU_CONVENTIONS,
    'eval.mode': inference.MODES,
    'eval.combine': inference.COMBINES,
    'train.damaged_checkpoints': ('move', 'stop'),
    'optim.schedule': optim.SCHEDULES,
}
_POSITIVE = ('train.steps', 'train.batch_size', 'train.log_every', 'train.checkpoint_every',
             'train.keep_checkpoints', 'eval.batch_size', 'eval.feature_samples', 'eval.feature_neighbours',
             'eval.windows_per_pass',
             'data.base_size', 'data.synthetic.image_size',
             'data.synthetic.num_train', 'data.synthetic.num_val')
_NON_NEGATIVE = ('data.ratio_step', 'data.crop_padding', 'eval.shape_bucket', 'train.eval_every', 'optim.lr',
                 'optim.weight_decay', 'optim.end_lr', 'optim.warmup_steps', 'data.worker_count',
                 'data.base_short_side')
_UNIT_INTERVAL = ('optim.momentum', 'optim.warmup_ratio')


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


def _pair(config, key: str, errors: list[str], *, positive: bool = True) -> None:
  value = get(config, key)
  if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
    errors.append(f'config.{key}={value!r} must be a pair of numbers, e.g. --config.{key}="(512, 512)"')
  elif positive and min(value) <= 0:
    errors.append(f'config.{key}={value!r} must be positive')


def validate(config: ml_collections.ConfigDict, *, known_datasets: Iterable[str] = (),
             num_classes: int | None = None, task: str | None = None) -> None:
  """Checks every value; raises ConfigError listing each bad key, its value and what is valid. `num_classes` and
  `task` (the dataset's, when known: DatasetInfo.task) check per-class settings and that the model and the
  evaluation suit the dataset."""
  errors: list[str] = models.problems(config.model)
  if not errors and task is not None:
    errors += models.task_problems(config.model, task, config.data.name)
  if task == 'classification':
    errors += _classification_eval_problems(config.eval)
  errors += losses.problems(config.loss, None if errors else models.head_outputs(config.model, train=True),
                            num_classes)
  errors += _lr_mult_problems(config.optim.lr_mults)
  errors += _ohem_group_problems(config)
  choices_by_key = dict(_CHOICES)
  if known_datasets:
    choices_by_key['data.name'] = tuple(known_datasets)
  for key, choices in choices_by_key.items():
    value = get(config, key)
    if value not in choices:
      hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
      errors.append(f'config.{key}={value!r} is not valid; choose one of {list(choices)}'
                    + (f' (did you mean {hint[0]!r}?)' if hint else ''))
  for key in _POSITIVE:
    if not get(config, key) > 0:
      errors.append(f'config.{key}={get(config, key)!r} must be > 0')
  for key in _NON_NEGATIVE:
    if not get(config, key) >= 0:
      errors.append(f'config.{key}={get(config, key)!r} must be >= 0')
  for key in _UNIT_INTERVAL:
    if not 0 <= get(config, key) < 1 + (key == 'optim.warmup_ratio'):
      errors.append(f'config.{key}={get(config, key)!r} must be in [0, 1)')
  for key in ('data.crop_size', 'data.eval_size', 'data.ratio_range', 'eval.crop_size', 'eval.stride'):
    _pair(config, key, errors)
  errors += _eval_protocol_problems(config.eval)
  for key in ('data.eval_scale', 'data.eval_label_size'):
    _pair(config, key, errors, positive=False)
    value = get(config, key)
    if isinstance(value, (tuple, list)) and len(value) == 2 and (min(value) < 0 or (0 in value and any(value))):
      errors.append(f'config.{key}={value!r} must be two positive numbers, or (0, 0) for the default')
  if not 0 < config.data.cat_max_ratio <= 1:
    errors.append(f'config.data.cat_max_ratio={config.data.cat_max_ratio!r} must be in (0, 1]; 1 turns it off')
  if not errors and config.data.ratio_range[0] > config.data.ratio_range[1]:
    errors.append(f'config.data.ratio_range={config.data.ratio_range!r} must be (low, high) with low <= high')
  pad = config.data.image_pad_value
  if not (isinstance(pad, (tuple, list)) and len(pad) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in pad)):
    errors.append(f'config.data.image_pad_value={pad!r} must be three integers in 0..255 (R, G, B), e.g. '
                  '--config.data.image_pad_value="(0, 0, 0)"')
  for key in ('data.eval_scale', 'data.eval_label_size'):
    value = get(config, key)
    if isinstance(value, (tuple, list)) and not all(isinstance(v, int) for v in value):
      errors.append(f'config.{key}={value!r} must hold integers (pixels)')
  for key in ('data.mean', 'data.std'):
    value = get(config, key)
    if not (isinstance(value, (tuple, list)) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
      errors.append(f'config.{key}={value!r} must be three numbers (R, G, B)')
    elif key == 'data.std' and not all(v > 0 for v in value):
      errors.append(f'config.data.std={value!r} must be three positive numbers: images are divided by it')
  if config.optim.end_lr > config.optim.lr:
    errors.append(f'config.optim.end_lr={config.optim.end_lr} must not exceed config.optim.lr={config.optim.lr}')
  if config.optim.warmup_steps >= config.train.steps > 0:
    errors.append(f'config.optim.warmup_steps={config.optim.warmup_steps} must be < config.train.steps='
                  f'{config.train.steps}')
  if len(errors) == 1:
    raise ConfigError(f'Invalid config: {errors[0]}')
  if errors:
    raise ConfigError('Invalid config:\n  ' + '\n  '.join(errors))


def _classification_eval_problems(settings: ml_collections.ConfigDict) -> list[str]:
  """A classifier is evaluated on whole images at one scale; the segmentation metrics have nothing to measure."""
  defaults = {'mode': 'whole', 'scales': (1.0,), 'flip': False, 'boundary_px': (), 'feature_metrics': False}
  changed = [key for key, default in defaults.items()
             if (tuple(settings[key]) if isinstance(default, tuple) else settings[key]) != default]
  if not changed:
    return []
  return [f'config.eval.{", ".join(changed)} apply to segmentation; a classification dataset is evaluated on whole '
          f'images at one scale: reset them to {", ".join(f"{key}={defaults[key]!r}" for key in changed)}']


def _eval_protocol_problems(settings: ml_collections.ConfigDict) -> list[str]:
  """Scales, trimap widths, and what the evaluation protocols cannot combine."""
  scales = settings.scales
  if not (isinstance(scales, (tuple, list)) and scales and all(isinstance(s, (int, float)) and s > 0 for s in scales)):
    return [f'config.eval.scales={scales!r} must be a non-empty tuple of positive factors, e.g. '
            '--config.eval.scales="(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)"; (1.0,) for single scale']
  widths = settings.boundary_px
  if not (isinstance(widths, (tuple, list)) and all(isinstance(w, int) and w > 0 for w in widths)):
    return [f'config.eval.boundary_px={widths!r} must be a tuple of positive pixel widths, e.g. '
            '--config.eval.boundary_px="(3, 7, 10, 20)", or () for none']
  if settings.combine != 'hrnet_520' and (settings.short_side or settings.fit_stride != 1 or settings.crop_fit_padding):
    return [f'config.eval.short_side, fit_stride and crop_fit_padding are for eval.combine=\'hrnet_520\' only, not '
            f'{settings.combine!r}; reset them (0, 1, False) or set --config.eval.combine=hrnet_520']
  if not (isinstance(settings.short_side, int) and settings.short_side >= 0
          and isinstance(settings.fit_stride, int) and settings.fit_stride > 0):
    return [f'config.eval.short_side={settings.short_side!r} and config.eval.fit_stride={settings.fit_stride!r} must '
            'be an int >= 0 and an int > 0, e.g. --config.eval.short_side=520 --config.eval.fit_stride=8']
  if settings.combine == 'hrnet_520' and settings.mode != 'slide':
    return [f'config.eval.combine=\'hrnet_520\' runs windows (once, padded to the crop, where the image fits it); '
            f'set --config.eval.mode=slide, not {settings.mode!r}']
  if settings.combine == 'hrnet_520' and settings.feature_metrics:
    return ['config.eval.feature_metrics=True is not supported with config.eval.combine=\'hrnet_520\' (its scale-1 '
            'image carries the fit padding); set --config.eval.feature_metrics=False']
  if settings.feature_metrics and transforms.resizes_on_device(settings) and 1.0 not in scales:
    return [f'config.eval.feature_metrics=True needs 1.0 among config.eval.scales={tuple(scales)!r}: the features '
            'are those of the whole image at scale 1']
  return []


def _ohem_group_problems(config: ml_collections.ConfigDict) -> list[str]:
  """OHEM groups must tile the global training batch."""
  errors = []
  batch = config.train.batch_size
  for name, term in config.loss.terms.items():
    group = term.get('ohem_group_size', 0) if term.get('reduction') == 'ohem' else 0
    if isinstance(group, int) and isinstance(batch, int) and group > 0 and batch % group:
      errors.append(f'config.loss.terms.{name}.ohem_group_size={group} does not divide config.train.batch_size='
                    f'{batch}; choose a divisor (the images of one reference GPU replica, e.g. 4 of 16), or 0 for '
                    'the whole batch')
  return errors


def _lr_mult_problems(lr_mults: Any) -> list[str]:
  example = f'--config.optim.lr_mults="((\'{HEADS_PATTERN}\', 10.0),)"'
  if not isinstance(lr_mults, (tuple, list)):
    return [f'config.optim.lr_mults={lr_mults!r} must be a tuple of (regex, multiplier) pairs, e.g. {example}']
  errors = []
  for entry in lr_mults:
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
            and isinstance(entry[1], (int, float)) and entry[1] >= 0):
      errors.append(f'config.optim.lr_mults entry {entry!r} must be (regex, multiplier >= 0), e.g. {example}')
      continue
    try:
      re.compile(entry[0])
    except re.error as e:
      errors.append(f'config.optim.lr_mults pattern {entry[0]!r} is not a valid regex: {e}')
  return errors
