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
from typing import Any

import ml_collections

from ctxseg_jax import models
from ctxseg_jax.config import HEADS_PATTERN
from ctxseg_jax.data.datasets import cityscapes, pascal_context
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import aux_fcn_head

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


def mmseg_ade20k_160k(config: ml_collections.ConfigDict) -> HeadSettings:
  """mmseg R-101-D8, ADE20K, 512x512 crops, 160k iterations at batch 16 (see configs/encnet_ade20k.py)."""
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
  return _r101_d8(config, stem='v1c', dropout_mode='channel')


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


def _hrnet_w48(config: ml_collections.ConfigDict, *, align_corners: bool, weight_init: str) -> HeadSettings:
  """HRNetV2-W48; returns the input settings of heads on its concatenated stages (48 + 96 + 192 + 384 = 720)."""
  config.model.backbone = BACKBONES.config('hrnet', width=48, align_corners=align_corners, weight_init=weight_init)
  models.set_head(config.model, 'aux_head', None)
  return dict(reads=(0, 1, 2, 3), input_transform='resize_concat', align_corners=align_corners)


def mmseg_hrnet_cityscapes_160k(config: ml_collections.ConfigDict) -> HeadSettings:
  """mmseg HRNetV2p-W48 heads, Cityscapes, 512x1024 crops, 160k iterations at batch 8 (see
  configs/ocrnet_hr48_mmseg_cityscapes.py); returns the input settings of heads on the concatenated stages."""
  _cityscapes_512x1024(config)
  config.data.ratio_range = (0.5, 2.0)
  _mmseg_augmentation(config)
  _mmseg_sgd(config, batch_size=8, steps=160_000, eval_every=16_000)
  return _hrnet_w48(config, align_corners=False, weight_init='kaiming')


# HRNet-OCR's fixed Cityscapes class weights (lib/datasets/cityscapes.py), used in its cross-entropy.
CITYSCAPES_CLASS_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023, 0.9539,
                            0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)


def hrnet_ocr_cityscapes(config: ml_collections.ConfigDict, *, epochs: int = 484) -> HeadSettings:
  """HRNet-OCR's Cityscapes protocol (seg_hrnet_ocr_w48 512x1024, batch 12, `epochs` epochs; see
  configs/ocrnet_hr48_cityscapes.py); returns the input settings of heads on the concatenated stages."""
  _cityscapes_512x1024(config)
  config.data.ratio_range = (0.5, 2.1)  # 0.5 + k / 10, k in 0..16 (SCALE_FACTOR 16)
  config.data.ratio_step = 0.1
  config.data.image_pad_value = (0, 0, 0)
  config.data.cat_max_ratio = 1.0
  config.data.photometric_distortion = False
  config.data.resize_antialias = False  # cv2
  _cross_entropy(config, aux_weight=0.4, reduction='valid', class_weight=CITYSCAPES_CLASS_WEIGHTS,
                 align_corners=True)  # BALANCE_WEIGHTS [0.4, 1]
  config.train.batch_size = 12
  config.train.steps = epochs * (cityscapes.NUM_IMAGES['train'] // config.train.batch_size)  # drop_last: 119,548
  config.train.eval_every = 12_000
  config.train.checkpoint_every = 4_000
  config.optim.lr = 0.01
  config.optim.lr_mults = ()
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.end_lr = 0.0
  config.eval.batch_size = 4
  config.eval.miou_convention = 'all'
  return _hrnet_w48(config, align_corners=True, weight_init='hrnet')


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
  return _r101_d8(config, stem='s', dropout_mode='element')


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
