"""Training and evaluation protocols shared by a method's config and its baseline's.

A protocol sets everything a paper's comparison holds fixed: data and augmentation, backbone, auxiliary head, the
cross-entropy terms, schedule, optimiser and evaluation; it also returns the decode-head settings the comparison
shares (width, dropout convention). A config file applies one and then sets its method as data: the decode head
(`models.set_head(config.model, 'decode_head', HEADS.config(type, **shared, ...))`) and the method's own loss
terms. So a pair like configs/encnet_ade20k.py and configs/fcn_ade20k.py differs only in the decode head and its
loss by construction. The reference behind each protocol is in the docstrings of the configs that use it.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import ml_collections

from ctxseg_jax import models
from ctxseg_jax.config import HEADS_PATTERN
from ctxseg_jax.data.datasets import ade20k, cityscapes, coco_stuff, pascal_context
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import HEADS, aux_fcn_head

HeadSettings = dict[str, Any]

# mmseg pads normalised images with 0, the mean colour: the uint8 RGB nearest to the ImageNet mean.
MMSEG_PAD_COLOUR = (124, 116, 104)


def _r101_d8(config: ml_collections.ConfigDict, *, stem: str, dropout_mode: str) -> HeadSettings:
  """Dilated ResNet-101 (output stride 8) and the auxiliary FCN head 256 wide on stage 3; returns the decode head
  settings: 512 wide, dropout 0.1 in `dropout_mode`."""
  config.model.backbone = BACKBONES.config('resnet', depth=101, stem=stem, output_stride=8)
  models.set_head(config.model, 'aux_head', aux_fcn_head(dropout=0.1, dropout_mode=dropout_mode))
  return dict(channels=512, dropout=0.1, dropout_mode=dropout_mode)


def _cross_entropy(config: ml_collections.ConfigDict, *, aux_weight: float, **settings: Any) -> None:
  """Cross-entropy on 'logits' (weight 1) and on the auxiliary head's 'aux_logits' (`aux_weight`), both with the
  cross_entropy `settings` (reduction, class weights, ...)."""
  set_term(config.loss, 'ce', TERMS.config('cross_entropy', **settings))
  set_term(config.loss, 'aux', TERMS.config('cross_entropy', output='aux_logits', weight=aux_weight, **settings))


def _mmseg_sgd(config: ml_collections.ConfigDict, *, batch_size: int, steps: int, eval_every: int) -> None:
  """mmseg's schedule: SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9 to 1e-4; CE over all pixels, aux 0.4."""
  _cross_entropy(config, reduction='all', aux_weight=0.4)
  config.train.batch_size = batch_size
  config.train.steps = steps
  config.train.eval_every = eval_every
  config.train.checkpoint_every = 4_000
  config.optim.lr = 0.01
  config.optim.lr_mults = ()
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.end_lr = 1e-4
  config.eval.batch_size = 8
  config.eval.miou_convention = 'present'


def _mmseg_augmentation(config: ml_collections.ConfigDict) -> None:
  """mmseg's training pipeline conventions: crops re-drawn while one class covers 75%, PhotoMetricDistortion,
  padding with the mean colour, cv2-like resizing (no antialiasing)."""
  config.data.image_pad_value = MMSEG_PAD_COLOUR
  config.data.cat_max_ratio = 0.75
  config.data.photometric_distortion = True
  config.data.resize_antialias = False


def _mmseg_ade20k_160k(config: ml_collections.ConfigDict) -> None:
  """mmseg ADE20K, 512x512 crops, 160k iterations at batch 16: data, augmentation, schedule, cross-entropy."""
  config.data.name = 'ade20k'
  config.data.base_size = 2048
  config.data.base_short_side = 512
  config.data.ratio_range = (0.5, 2.0)
  config.data.crop_size = (512, 512)
  config.data.eval_size = (2048, 2048)
  _mmseg_augmentation(config)
  config.data.eval_scale = (2048, 512)
  config.data.eval_label_size = (2048, 2048)
  _mmseg_sgd(config, batch_size=16, steps=160_000, eval_every=16_000)


def mmseg_ade20k_160k(config: ml_collections.ConfigDict) -> HeadSettings:
  """mmseg R-101-D8, ADE20K, 512x512 crops, 160k iterations at batch 16 (see configs/encnet_ade20k.py)."""
  _mmseg_ade20k_160k(config)
  return _r101_d8(config, stem='v1c', dropout_mode='channel')


def mmseg_hrnet_ade20k_160k(config: ml_collections.ConfigDict) -> HeadSettings:
  """mmseg HRNetV2p-W48 heads, ADE20K, 512x512 crops, 160k iterations at batch 16 (see
  configs/hrnet_w48_ade20k.py); returns the input settings of heads on the concatenated stages."""
  _mmseg_ade20k_160k(config)
  return _hrnet(config, width=48, align_corners=False, weight_init='kaiming')


def _cityscapes_512x1024(config: ml_collections.ConfigDict) -> None:
  """Cityscapes: the long side rescaled to 2048 x r, 512x1024 crops; evaluated whole at 1024x2048."""
  config.data.name = 'cityscapes'
  config.data.base_size = 2048
  config.data.crop_size = (512, 1024)
  config.data.eval_size = (1024, 2048)
  config.data.eval_scale = (2048, 1024)


def mmseg_cityscapes_80k(config: ml_collections.ConfigDict) -> HeadSettings:
  """mmseg R-101-D8, Cityscapes, 512x1024 crops, 80k iterations at batch 8 (see configs/encnet_cityscapes.py)."""
  _cityscapes_512x1024(config)
  config.data.ratio_range = (0.5, 2.0)
  _mmseg_augmentation(config)
  _mmseg_sgd(config, batch_size=8, steps=80_000, eval_every=8_000)
  return _r101_d8(config, stem='v1c', dropout_mode='channel')


def _hrnet(config: ml_collections.ConfigDict, *, width: int, align_corners: bool, weight_init: str) -> HeadSettings:
  """HRNetV2-W`width` without an auxiliary head; returns the input settings of heads on its concatenated stages
  (15 x width channels: 720 for W48). The protocol's 'aux' loss term stays for OCRNet's soft-region head; an
  HRNet baseline removes it."""
  config.model.backbone = BACKBONES.config('hrnet', width=width, align_corners=align_corners,
                                           weight_init=weight_init)
  models.set_head(config.model, 'aux_head', None)
  return dict(reads=(0, 1, 2, 3), input_transform='resize_concat', align_corners=align_corners)


def mmseg_hrnet_cityscapes_160k(config: ml_collections.ConfigDict, *, width: int = 48) -> HeadSettings:
  """mmseg HRNetV2p-W`width` heads, Cityscapes, 512x1024 crops, 160k iterations at batch 8 (see
  configs/ocrnet_hr48_cityscapes_mmseg.py); returns the input settings of heads on the concatenated stages."""
  _cityscapes_512x1024(config)
  config.data.ratio_range = (0.5, 2.0)
  _mmseg_augmentation(config)
  _mmseg_sgd(config, batch_size=8, steps=160_000, eval_every=16_000)
  return _hrnet(config, width=width, align_corners=False, weight_init='kaiming')


def mmseg_cityscapes_40k(config: ml_collections.ConfigDict) -> HeadSettings:
  """mmseg R-101-D8, Cityscapes, 512x1024 crops, 40k iterations at batch 8 (see configs/ocrnet_r101_cityscapes.py)."""
  shared = mmseg_cityscapes_80k(config)
  config.train.steps = 40_000
  config.train.eval_every = 4_000
  return shared


class ContextrastSchedule(NamedTuple):
  """One dataset of Contextrast's grid (Contextrast++ Table II, mmseg-based)."""
  batch_size: int
  steps: int
  lr: float


CONTEXTRAST_SCHEDULES = {
    'cityscapes': ContextrastSchedule(8, 40_000, 0.01),
    'camvid': ContextrastSchedule(16, 6_000, 0.02),
    'ade20k': ContextrastSchedule(12, 80_000, 0.01),
    'pcontext': ContextrastSchedule(16, 60_000, 0.01),
    'coco_stuff': ContextrastSchedule(16, 60_000, 0.01),
}


def _contextrast_data(config: ml_collections.ConfigDict, dataset: str) -> None:
  """mmseg's pipeline for `dataset` with the crop Contextrast trains on (512x1024 Cityscapes, 360x480 CamVid,
  512x512 elsewhere): keep-ratio rescale x U(0.5, 2.0), crop with cat_max_ratio 0.75, flip, PhotoMetricDistortion."""
  data = config.data
  data.ratio_range = (0.5, 2.0)
  if dataset == 'cityscapes':
    _cityscapes_512x1024(config)
  elif dataset == 'camvid':  # 480x360 images: the mmseg convention at the native scale, scored on the test split
    data.name, data.eval_split = 'camvid', 'test'
    data.base_size, data.crop_size, data.eval_size = 480, (360, 480), (360, 480)
  elif dataset == 'pcontext':  # mmseg pascal_context_59: scale (520, 520)
    data.name = 'pascal_context_59'
    data.base_size, data.crop_size = 520, (512, 512)
    data.eval_scale, data.eval_size, data.eval_label_size = (520, 520), (520, 520), (500, 500)
  else:  # ADE20K and COCO-Stuff-10k: mmseg's scale (2048, 512)
    data.name = 'ade20k' if dataset == 'ade20k' else 'coco_stuff10k'
    data.base_size, data.base_short_side, data.crop_size = 2048, 512, (512, 512)
    data.eval_scale, data.eval_size = (2048, 512), (2048, 2048)
    data.eval_label_size = (2048, 2048) if dataset == 'ade20k' else (640, 640)
  _mmseg_augmentation(config)


def contextrast_grid(config: ml_collections.ConfigDict, dataset: str, backbone: str) -> HeadSettings:
  """The protocol of a cell of Contextrast's grid (see configs/contextrast.py): `dataset` a key of
  CONTEXTRAST_SCHEDULES, `backbone` 'r101_d8' (with mmseg's auxiliary FCN head) or 'hrnet_w48'; SGD momentum 0.9,
  wd 5e-4, poly to 1e-4, cross-entropy over all pixels (auxiliary 0.4); evaluation also reports the paper's
  feature-level metrics A / U / U_l and Contextrast++'s boundary mIoU (3, 7, 10 and 20 px trimaps); returns the
  decode heads' settings."""
  schedule = CONTEXTRAST_SCHEDULES[dataset]
  _contextrast_data(config, dataset)
  config.eval.feature_metrics = True
  config.eval.boundary_px = (3, 7, 10, 20)  # Contextrast++'s trimaps
  _mmseg_sgd(config, batch_size=schedule.batch_size, steps=schedule.steps, eval_every=schedule.steps // 10)
  config.optim.lr = schedule.lr
  if backbone == 'r101_d8':
    return _r101_d8(config, stem='v1c', dropout_mode='channel')
  return _hrnet(config, width=48, align_corners=False, weight_init='kaiming')


# HRNet-OCR's fixed Cityscapes class weights (lib/datasets/cityscapes.py), used in its cross-entropy.
CITYSCAPES_CLASS_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023, 0.9539,
                            0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)


def _hrnet_ocr_training(config: ml_collections.ConfigDict, *, num_train: int, batch_size: int, epochs: int,
                        lr: float, weight_decay: float, head_lr_mult: float) -> None:
  """HRNet-OCR's training and scoring conventions: the long side rescaled to data.base_size x (0.5 + k / 10), k in
  0..16, padding 0, no crop re-drawing or photometric distortion, cv2 resizing; `epochs` epochs of
  num_train // batch_size iterations (drop_last); SGD momentum 0.9, poly 0.9 to 0, the heads ('cls', 'aux' and
  'ocr' modules) at `head_lr_mult` x lr; mIoU over all classes."""
  config.data.ratio_range = (0.5, 2.1)  # SCALE_FACTOR 16
  config.data.ratio_step = 0.1
  config.data.image_pad_value = (0, 0, 0)
  config.data.cat_max_ratio = 1.0
  config.data.photometric_distortion = False
  config.data.resize_antialias = False
  config.train.batch_size = batch_size
  config.train.steps = epochs * (num_train // batch_size)
  config.optim.lr = lr
  config.optim.lr_mults = ((HEADS_PATTERN, head_lr_mult),) if head_lr_mult != 1 else ()
  config.optim.momentum = 0.9
  config.optim.weight_decay = weight_decay
  config.optim.end_lr = 0.0
  config.eval.batch_size = 4
  config.eval.miou_convention = 'all'
  config.eval.combine = 'hrnet'
  config.eval.align_corners = True


def hrnet_ocr_cityscapes(config: ml_collections.ConfigDict, *, epochs: int = 484) -> HeadSettings:
  """HRNet-OCR's Cityscapes protocol (seg_hrnet_ocr_w48 512x1024, batch 12, `epochs` epochs; see
  configs/ocrnet_hr48_cityscapes.py); returns the input settings of heads on the concatenated stages."""
  _cityscapes_512x1024(config)
  _hrnet_ocr_training(config, num_train=cityscapes.NUM_IMAGES['train'], batch_size=12, epochs=epochs, lr=0.01,
                      weight_decay=5e-4, head_lr_mult=1.0)  # 484 epochs: 119,548 iterations
  _cross_entropy(config, aux_weight=0.4, reduction='valid', class_weight=CITYSCAPES_CLASS_WEIGHTS,
                 align_corners=True)  # BALANCE_WEIGHTS [0.4, 1]
  config.train.eval_every = 12_000
  config.train.checkpoint_every = 4_000
  # multi_scale_inference: the whole image at scales <= 1, 1024x2048 windows every 1024x2048 above (TEST.
  # MULTI_SCALE: --config.eval.scales="(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)" --config.eval.flip=True).
  config.eval.mode = 'slide'
  config.eval.crop_size = config.eval.stride = (1024, 2048)
  return _hrnet(config, width=48, align_corners=True, weight_init='hrnet')


class Hrnet520(NamedTuple):
  """One of HRNet-OCR's 520x520 yamls (seg_hrnet_ocr_w48_520x520_*): its schedule, loss and evaluation bounds."""
  num_train: int  # images in the training list
  epochs: int
  lr: float
  head_lr_mult: float  # NONBACKBONE_MULT for the 'cls', 'aux' and 'ocr' modules (1: none)
  ohem: bool  # LOSS.USE_OHEM (on the main output only)
  eval_long_cap: int  # the longest side a testval image (short side 520, padded to a multiple of 8) may have here
  eval_label_size: tuple[int, int]  # the largest original image, where labels are scored
  crop_fit_padding: bool  # testval crops the multiple-of-8 padding before resizing to the label (COCO-Stuff)


HRNET_520 = {
    'ade20k': Hrnet520(ade20k.NUM_IMAGES['train'], 120, 0.02, 1.0, True, 2080, (2048, 2048), False),
    'pascal_context_59': Hrnet520(pascal_context.NUM_IMAGES['train'], 200, 0.001, 10.0, False, 1040, (500, 500),
                                  False),
    'coco_stuff10k': Hrnet520(coco_stuff.NUM_IMAGES_10K['train2014'], 110, 0.001, 10.0, True, 1040, (640, 640),
                              True),
}


def hrnet_ocr_520(config: ml_collections.ConfigDict, dataset: str) -> HeadSettings:
  """HRNet-OCR's ADE20K, PASCAL-Context-59 and COCO-Stuff-10k protocols (`dataset`, a key of HRNET_520; see
  configs/ocrnet_hr48_ade20k.py): 520x520 crops, batch 16 as 4 GPUs x 4, SGD momentum 0.9, wd 1e-4, poly 0.9 to 0,
  OHEM per GPU replica where the yaml uses it; returns the input settings of heads on the concatenated stages."""
  spec = HRNET_520[dataset]
  config.data.name = dataset
  config.data.base_size = 520
  config.data.crop_size = (520, 520)
  _hrnet_ocr_training(config, num_train=spec.num_train, batch_size=16, epochs=spec.epochs, lr=spec.lr,
                      weight_decay=1e-4, head_lr_mult=spec.head_lr_mult)
  # testval: the short side resized to 520, padded to a multiple of 8; multi_scale_inference: 520 windows every
  # 346 (crop x 2/3); single scale, no flip (ms+flip: --config.eval.scales="(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)"
  # --config.eval.flip=True, the README's test).
  config.data.eval_size = (spec.eval_long_cap, spec.eval_long_cap)
  config.data.eval_label_size = spec.eval_label_size
  config.eval.combine = 'hrnet_520'
  config.eval.mode = 'slide'
  config.eval.crop_size = (520, 520)
  config.eval.stride = (346, 346)
  config.eval.short_side = 520
  config.eval.fit_stride = 8
  config.eval.crop_fit_padding = spec.crop_fit_padding
  _cross_entropy(config, aux_weight=0.4, reduction='valid', align_corners=True)  # BALANCE_WEIGHTS [0.4, 1]
  if spec.ohem:  # OHEMTHRES 0.9, OHEMKEEP 131072 per replica of 4 images
    config.loss.terms.ce.reduction = 'ohem'
    config.loss.terms.ce.ohem_thresh = 0.9
    config.loss.terms.ce.ohem_min_kept = 131_072
    config.loss.terms.ce.ohem_group_size = 4
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 2_000
  return _hrnet(config, width=48, align_corners=True, weight_init='hrnet')


def pytorch_encoding_pcontext(config: ml_collections.ConfigDict, *, epochs: int = 80) -> HeadSettings:
  """PyTorch-Encoding ResNet-101s, PASCAL-Context 59, 480x480 crops, `epochs` epochs at batch 16 (see
  configs/encnet_pcontext.py)."""
  config.data.name = 'pascal_context_59'
  config.data.base_size = 520
  config.data.ratio_range = (0.5, 2.0)
  config.data.crop_size = (480, 480)
  config.data.eval_size = (520, 520)
  config.data.image_pad_value = (0, 0, 0)
  config.data.cat_max_ratio = 1.0
  config.data.photometric_distortion = False
  config.data.resize_antialias = True
  config.data.eval_scale = (520, 520)
  config.data.eval_label_size = (500, 500)
  _cross_entropy(config, reduction='valid', aux_weight=0.2)
  config.train.batch_size = 16
  config.train.steps = math.ceil(epochs * pascal_context.NUM_IMAGES['train'] / config.train.batch_size)  # 24990
  config.train.eval_every = 2_500
  config.train.checkpoint_every = 1_000
  config.optim.lr = 0.001 * config.train.batch_size / 16
  config.optim.lr_mults = ((HEADS_PATTERN, 10.0),)  # heads and auxiliary head at 10x
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.end_lr = 0.0
  config.eval.batch_size = 16
  config.eval.miou_convention = 'all'
  pytorch_encoding_evaluation(config)
  return _r101_d8(config, stem='s', dropout_mode='element')


PTE_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def pytorch_encoding_evaluation(config: ml_collections.ConfigDict) -> None:
  """PyTorch-Encoding's MultiEvalModule as its model zoo numbers are measured (test.py --eval --ms): long side
  ceil(data.base_size x s) for s in 0.5..1.75, 480x480 windows every 320 pixels (crop x 2/3) padded with black,
  exp(logits + mirrored logits) summed, align_corners True. Single scale: --config.eval.scales="(1.0,)"."""
  config.eval.combine = 'pte'
  config.eval.mode = 'slide'
  config.eval.crop_size = tuple(config.data.crop_size)
  config.eval.stride = tuple(int(c * 2 / 3) for c in config.data.crop_size)
  config.eval.scales = PTE_SCALES
  config.eval.flip = True
  config.eval.align_corners = True
  config.eval.windows_per_pass = 16


def hrnet_v2_head(config: ml_collections.ConfigDict, stages: HeadSettings, *, width: int) -> None:
  """HRNetV2's segmentation head on HRNetV2-W`width`'s concatenated stages, as mmseg's fcn_hr* configs build it (a
  1x1 ConvModule 15W -> 15W, no dropout, conv_seg), as the decode head; no auxiliary head, so no 'aux' loss."""
  models.set_head(config.model, 'decode_head', HEADS.config(
      'fcn', **stages, kernel_size=1, num_convs=1, channels=15 * width, concat_input=False, dropout=0.0))
  set_term(config.loss, 'aux', None)


def ocr_on_hrnet(config: ml_collections.ConfigDict, stages: HeadSettings, *, width: int, flavour: str) -> None:
  """OCRNet's two heads on HRNetV2-W`width`'s concatenated stages (15 x width channels), in `flavour`:
  'hrnet_ocr' (HRNet-OCR: biased aux conv and 3x3 bottleneck, Dropout2d 0.05, PyTorch's default init) or
  'mmseg' (CascadeEncoderDecoder: ConvModules without bias, no dropout, mmcv init). The soft-region head runs at
  inference; its 'aux_logits' feed the OCR head and the protocol's 'aux' loss term."""
  if flavour not in ('hrnet_ocr', 'mmseg'):
    raise ValueError(f"flavour={flavour!r}; choose 'hrnet_ocr' or 'mmseg'")
  hrnet_ocr = flavour == 'hrnet_ocr'
  init = 'pytorch' if hrnet_ocr else 'mmcv'
  models.set_head(config.model, 'aux_head', HEADS.config(
      'fcn', **stages, kernel_size=1, num_convs=1, channels=15 * width, concat_input=False, conv_bias=hrnet_ocr,
      dropout=0.0, weight_init=init, outputs=('aux_logits',)))
  models.set_head(config.model, 'decode_head', HEADS.config(
      'ocr', **stages, reads_outputs=('aux_logits',), channels=512, key_channels=256, bottleneck_bias=hrnet_ocr,
      dropout=0.05 if hrnet_ocr else 0.0, weight_init=init))


# CIFAR-10's per-channel training-set mean and std (the torchvision Normalize values of CIFAR pipelines, 0.4914,
# 0.4822, 0.4465 and 0.2023, 0.1994, 0.2010) in 0..255 pixel units.
CIFAR10_MEAN = (125.307, 122.961, 113.8575)
CIFAR10_STD = (51.5865, 50.847, 51.255)


def _classifier(config: ml_collections.ConfigDict, backbone: ml_collections.ConfigDict) -> None:
  """`backbone` with the 'classifier' head on its last stage as the whole model (no decode or auxiliary head), and
  softmax cross-entropy over the images as the whole loss."""
  config.model.backbone = backbone
  for name in list(config.model.heads):
    models.set_head(config.model, name, None)
  models.set_head(config.model, 'classifier', HEADS.config('classifier', reads=(2,)))
  set_term(config.loss, 'aux', None)
  set_term(config.loss, 'ce', TERMS.config('cross_entropy'))


def _cifar_training(config: ml_collections.ConfigDict, backbone: ml_collections.ConfigDict, *, batch_size: int,
                    steps: int, eval_every: int, eval_batch_size: int) -> None:
  """PyTorch-Encoding's CIFAR recipe on `backbone` with the classifier head: 32x32 crops of the image padded by 4
  black pixels on every side, horizontal flips (the image normalised on device by data.mean / data.std); SGD lr 0.1,
  momentum 0.9, weight decay 5e-4 on every parameter, cosine decay per iteration over `steps`; evaluated on the
  whole 32x32 image."""
  config.data.crop_size = (32, 32)
  config.data.crop_padding = 4
  config.data.flip = True
  config.data.image_pad_value = (0, 0, 0)
  config.data.eval_size = (32, 32)
  _classifier(config, backbone)
  config.optim.schedule = 'cosine'
  config.optim.lr = 0.1
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.end_lr = 0.0
  config.optim.lr_mults = ()
  config.train.batch_size = batch_size
  config.train.steps = steps
  config.train.eval_every = config.train.checkpoint_every = eval_every
  config.train.log_every = max(1, eval_every // 2)
  config.eval.batch_size = eval_batch_size


def pytorch_encoding_cifar10(config: ml_collections.ConfigDict, *, epochs: int = 600) -> None:
  """PyTorch-Encoding's CIFAR-10 protocol (experiments/recognition, the EncNet paper's 3.45% network; see
  configs/encnet_cifar10.py): EncNet's CIFAR network, `_cifar_training` over `epochs` epochs of the 50000 training
  images at batch 128, evaluated every 10 epochs on the 10000 test images at batch 256."""
  config.data.name = 'cifar10'
  config.data.train_split, config.data.eval_split = 'train', 'test'
  config.data.mean, config.data.std = CIFAR10_MEAN, CIFAR10_STD
  steps_per_epoch = 50_000 / 128
  _cifar_training(config, BACKBONES.config('cifar_resnet'), batch_size=128, steps=int(epochs * steps_per_epoch),
                  eval_every=int(10 * steps_per_epoch), eval_batch_size=256)


def synthetic_classification_demo(config: ml_collections.ConfigDict, *, num_codes: int) -> None:
  """The classification demo (configs/demo_classification.py): EncNet's CIFAR network at width 16 (16, 32, 64
  channels) with `num_codes` codewords in every block's Context Encoding Module (0: none), on 32 px synthetic
  scenes whose class depends on the scene (data.name 'synthetic_classification'), with the CIFAR-10 recipe
  (`_cifar_training`) at a CPU budget: 200 steps at batch 64, evaluated on 1000 images every 100."""
  config.data.name = 'synthetic_classification'
  config.data.synthetic.image_size = 32
  config.data.synthetic.num_train = 20_000
  config.data.synthetic.num_val = 1_000
  config.data.worker_count = 1
  _cifar_training(config, BACKBONES.config('cifar_resnet', base_width=16, num_codes=num_codes), batch_size=64,
                  steps=200, eval_every=100, eval_batch_size=100)


def synthetic_demo(config: ml_collections.ConfigDict) -> HeadSettings:
  """The CPU demo: a width-16 dilated ResNet-18 on 96 px synthetic context images, 1200 steps (configs/demo.py)."""
  config.data.name = 'synthetic_context'
  config.data.synthetic.image_size = 96
  config.data.synthetic.num_train = 2000
  config.data.synthetic.num_val = 200
  config.data.base_size = 96
  config.data.ratio_range = (0.75, 1.5)
  config.data.crop_size = (96, 96)
  config.data.eval_size = (96, 96)
  config.data.worker_count = 1
  config.model.backbone = BACKBONES.config('resnet', depth=18, stem='v1c', base_width=16)
  models.set_head(config.model, 'aux_head', aux_fcn_head(channels=32))
  config.optim.lr = 0.04
  config.optim.weight_decay = 1e-4
  config.optim.lr_mults = ()
  config.train.steps = 1200
  config.train.batch_size = 16
  config.train.log_every = 100
  config.train.eval_every = 400
  config.train.checkpoint_every = 200
  config.eval.batch_size = 40
  return dict(channels=64)


def synthetic_demo_hrnet(config: ml_collections.ConfigDict) -> HeadSettings:
  """The CPU demo's data and budget (`synthetic_demo`) on a width-16 HRNetV2-W18-Small-v2 topology, without an
  auxiliary head (configs/demo_hrnet.py, configs/demo_ocr.py); returns the input settings of heads on the
  concatenated stages (16 + 32 + 64 + 128 = 240 channels)."""
  synthetic_demo(config)
  config.model.backbone = BACKBONES.config('hrnet', width=16, depth='small', align_corners=False,
                                           weight_init='kaiming')
  models.set_head(config.model, 'aux_head', None)
  return dict(reads=(0, 1, 2, 3), input_transform='resize_concat', align_corners=False)
