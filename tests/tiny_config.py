"""A config small enough for tests: a width-8 dilated ResNet-18 FCN on 32x32 synthetic images.

Usable as a config file: python -m ctxseg_jax.main --config tests/tiny_config.py
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import HEADS, aux_fcn_head


def tiny_model_config(decode: str = 'fcn', dtype: str = 'float32', **decode_settings):
  """config.model of a width-8 ResNet-18 with a 16-wide decode head of type `decode` ('fcn' or 'enc': reads
  stages 2-4, 8 codes) and an 8-wide auxiliary FCN head."""
  model = base_config().model
  model.dtype = dtype
  model.backbone = BACKBONES.config('resnet', depth=18, base_width=8)
  defaults = {'fcn': dict(reads=(3,)), 'enc': dict(reads=(1, 2, 3), num_codes=8)}[decode]
  models.set_head(model, 'decode_head', HEADS.config(decode, channels=16, **{**defaults, **decode_settings}))
  models.set_head(model, 'aux_head', aux_fcn_head(channels=8))
  return model


def use_encnet(config, se_weight: float = 0.2, **decode_settings):
  """Turns a tiny config into an EncNet (EncHead with 8 codes + SE-loss)."""
  config.model = tiny_model_config('enc', config.model.dtype, **decode_settings)
  set_term(config.loss, 'se', TERMS.config('se', output='se_logits', weight=se_weight))
  return config


def use_ocrnet(config):
  """Turns a tiny config into HRNet-OCR on a width-4 HRNetV2 (W18-Small-v2 depth): a biased 1x1 soft-region head
  (60 wide, PyTorch init) read by a 16-wide OCR head with 8 key channels and Dropout2d 0.05; OHEM on the logits in
  groups of 4 images, cross-entropy weighted 0.4 on the regions."""
  config.model.backbone = BACKBONES.config('hrnet', width=4, depth='small')
  stages = dict(reads=(0, 1, 2, 3), input_transform='resize_concat', align_corners=True)
  models.set_head(config.model, 'aux_head', HEADS.config(
      'fcn', **stages, kernel_size=1, num_convs=1, channels=60, concat_input=False, conv_bias=True, dropout=0.0,
      weight_init='pytorch', outputs=('aux_logits',)))
  models.set_head(config.model, 'decode_head', HEADS.config(
      'ocr', **stages, reads_outputs=('aux_logits',), channels=16, key_channels=8, weight_init='pytorch'))
  config.loss.terms.ce.reduction = 'ohem'
  config.loss.terms.ce.ohem_min_kept = 500
  config.loss.terms.ce.ohem_group_size = 4
  return config


def use_contextrast(config, num_negatives: int = 32):
  """Adds Contextrast to a tiny config: an 8-wide training-only projection head on each stage and the pixel-anchor
  term (weight 0.1) with `num_negatives` per anchor."""
  for stage in range(4):
    models.set_head(config.model, f'proj_{stage + 1}', HEADS.config(
        'projection', reads=(stage,), embed_dim=8, train_only=True, outputs=(f'embed_{stage + 1}',)))
  set_term(config.loss, 'contextrast', TERMS.config('contextrast', weight=0.1, num_negatives=num_negatives))
  return config


def resnet50_encnet_model(layout: str, stem: str | None = None):
  """config.model of a tiny EncNet on a width-8 ResNet-50 as PyTorch-Encoding trains it on PASCAL-Context
  (layout 'pte': resnet50s stem, lateral connections, element dropout) or as mmseg does ('mmseg': ResNetV1c, no
  lateral, Dropout2d), with the 8-wide auxiliary FCN head: the forms bench/torch_reference.py builds."""
  model = tiny_model_config('enc', lateral=layout == 'pte')
  model.backbone = BACKBONES.config('resnet', depth=50, base_width=8, stem=stem or ('s' if layout == 'pte' else 'v1c'))
  if layout == 'pte':
    model.heads.decode_head.dropout_mode = 'element'
    model.heads.aux_head.dropout_mode = 'element'
  return model


def tiny_budget(config):
  """A test's data and schedule sizes: 64 train and 12 val generated images in the main process, 6 steps of batch
  8, logged every 2, saved every 3, evaluated at the end (batch 8)."""
  config.data.synthetic.num_train = 64
  config.data.synthetic.num_val = 12
  config.data.worker_count = 0
  config.train.steps = 6
  config.train.batch_size = 8
  config.train.log_every = 2
  config.train.eval_every = 0
  config.train.checkpoint_every = 3
  config.eval.batch_size = 8
  return config


def tiny_classification_config(num_codes: int = 4):
  """The classification demo (protocols.synthetic_classification_demo) at test size: EncNet's CIFAR network at
  width 4 with one block a stage (half the compilation) and `num_codes` codewords per block (0: none), on 32 px
  synthetic scenes, with tiny_budget."""
  config = base_config()
  config.name = 'tiny_classification'
  protocols.synthetic_classification_demo(config, num_codes=num_codes)
  config.model.backbone.base_width = 4
  config.model.backbone.blocks = 1
  return tiny_budget(config)


def get_config(variant: str = ''):
  """The tiny config; variant 'encnet_pte' or 'encnet_mmseg' (as a config file: tests/tiny_config.py:encnet_pte)
  swaps in resnet50_encnet_model(layout) with the SE-loss."""
  config = base_config()
  config.name = 'tiny'
  config.data.synthetic.image_size = 32
  config.data.base_size = 32
  config.data.ratio_range = (0.75, 1.25)
  config.data.crop_size = (32, 32)
  config.data.eval_size = (32, 32)
  config.model = tiny_model_config()
  config.optim.lr = 0.01
  tiny_budget(config)
  if variant:
    use_encnet(config)
    config.model = resnet50_encnet_model(variant.removeprefix('encnet_'))
  return config
