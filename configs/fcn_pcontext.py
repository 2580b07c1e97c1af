"""FCN baseline for configs/encnet_pcontext.py: PyTorch-Encoding's FCN (ResNet-101s), PASCAL-Context 59 classes,
with exactly the EncNet run's protocol, so the pair isolates the Context Encoding Module and the SE-loss.

PyTorch-Encoding's FCN head is one 3x3 conv 2048 -> 512 + BN + ReLU, dropout 0.1 (element-wise), 1x1 classifier
(FCNHead(2048): num_convs 1, no input concat); EncNet's head starts with the same conv. The auxiliary FCN head on
stage 3 is kept (weight 0.2) as in the EncNet run.

Published numbers: PyTorch-Encoding lists no FCN result for PASCAL-Context. The nearest is mmseg's FCN R-101-D8,
PASCAL-Context 59, 480x480, 80k iterations: 49.35 mIoU single-scale (51.38 ms+flip), with mmseg's protocol (V1c
stem, 2-conv head with input concat, lr 0.004, 80k x 16 images, mean over present classes), so it is a reference
point, not a target for this config.

See configs/encnet_pcontext.py for the protocol and what is not reproduced yet.
"""
import math

from ctxseg_jax.config import base_config
from ctxseg_jax.data.datasets import pascal_context

EPOCHS = 80


def get_config():
  config = base_config()
  config.name = 'fcn_pcontext'
  config.data.name = 'pascal_context_59'
  config.data.base_size = 520
  config.data.ratio_range = (0.5, 2.0)
  config.data.crop_size = (480, 480)
  config.data.eval_size = (520, 520)
  config.data.image_pad_value = (0, 0, 0)
  config.data.cat_max_ratio = 1.0
  config.data.photometric_distortion = False
  config.data.eval_scale = (520, 520)
  config.data.eval_label_size = (500, 500)

  config.model.name = 'fcn'
  config.model.backbone.depth = 101
  config.model.backbone.stem = 's'
  config.model.backbone.output_stride = 8
  config.model.head.channels = 512
  config.model.head.num_convs = 1
  config.model.head.concat_input = False
  config.model.head.dropout = 0.1
  config.model.head.dropout_mode = 'element'
  config.model.aux_head.enabled = True
  config.model.aux_head.channels = 256
  config.model.aux_head.dropout = 0.1

  config.loss.ce_reduction = 'valid'
  config.loss.aux_weight = 0.2

  config.train.batch_size = 16
  config.train.steps = math.ceil(EPOCHS * pascal_context.NUM_IMAGES['train'] / config.train.batch_size)  # 24990
  config.train.eval_every = 2_500
  config.train.checkpoint_every = 1_000

  config.optim.lr = 0.001 * config.train.batch_size / 16
  config.optim.head_lr_mult = 10.0
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.end_lr = 0.0

  config.eval.batch_size = 16
  config.eval.miou_convention = 'all'
  return config
