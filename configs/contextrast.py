"""Contextrast (Sung et al., CVPR 2024) on DeepLabV3, HRNetV2 and OCRNet: the paper's grid, one cell per argument.

  python -m ctxseg_jax.main --config configs/contextrast.py:deeplabv3_r101,cityscapes            # Contextrast on
  python -m ctxseg_jax.main --config configs/contextrast.py:deeplabv3_r101,cityscapes,baseline   # the same without

Models: `deeplabv3_r101` (mmseg DeepLabV3 R-101-D8: ASPP head and auxiliary FCN head), `hrnet_w48` (mmseg
fcn_hr48: HRNetV2p-W48 and its 1x1 head) and `ocrnet_hr48` (mmseg OCRNet HRNetV2p-W48). Datasets: `cityscapes`
(512x1024 crops, batch 8, 40k iterations: mmseg's Cityscapes protocol of configs/encnet_cityscapes.py at 40k;
single-scale test). The other datasets of the paper's table (CamVid, ADE20K, PASCAL-Context, COCO-Stuff) are
not cells yet.

Targets (mIoU, Cityscapes val; Contextrast++ Table III, the same authors' re-report of the CVPR paper): DeepLabV3
77.12 -> 79.35 with Contextrast, HRNetV2-W48 78.48 -> 82.20, OCRNet-W48 79.95 -> 81.94. The first two baselines
are mmseg's model-zoo numbers at 40k; mmseg's OCRNet HRNetV2p-W48 at 40k scores 80.58 (ms+flip 81.79), not 79.95.

Contextrast: a training-only projection head (ContrastiveSeg's convmlp to 256, L2-normalised) on each of the four
encoder layers (ResNet stages 1-4; HRNet's four branches) and the pixel-anchor term weighted alpha = 0.1 with the
term's defaults (ctxseg_jax/losses/contextrast.py: lambda 0.1, 0.4, 0.7, 1.0 from layer 1 to 4, tau 0.1, anchors
mixed 0.5 / 0.5 with the last layer's and normalised, 256 negatives per anchor with BANE's first, K = 50%, BANE
error maps per true class). At inference the model is exactly the baseline's.

Not yet reproduced here: the ImageNet-pretrained backbones (weight import is planned).
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.heads import HEADS

MODELS = ('deeplabv3_r101', 'hrnet_w48', 'ocrnet_hr48')
DATASETS = ('cityscapes',)


def _deeplabv3_r101(config):
  shared = protocols.mmseg_cityscapes_40k(config)
  models.set_head(config.model, 'decode_head', HEADS.config('aspp', reads=(3,), dilations=(1, 12, 24, 36), **shared))


def _hrnet_stages(config):
  stages = protocols.mmseg_hrnet_cityscapes_160k(config)
  config.train.steps = 40_000
  config.train.eval_every = 4_000
  return stages


def _hrnet_w48(config):
  protocols.hrnet_v2_head(config, _hrnet_stages(config), width=48)


def _ocrnet_hr48(config):
  protocols.ocr_on_hrnet(config, _hrnet_stages(config), width=48, flavour='mmseg')


BUILDERS = {'deeplabv3_r101': _deeplabv3_r101, 'hrnet_w48': _hrnet_w48, 'ocrnet_hr48': _ocrnet_hr48}


def get_config(arg: str = 'deeplabv3_r101,cityscapes'):
  parts = arg.split(',')
  if (len(parts) not in (2, 3) or parts[0] not in MODELS or parts[1] not in DATASETS
      or parts[2:] not in ([], ['baseline'])):
    raise ValueError(f'configs/contextrast.py:{arg} is not a cell; write configs/contextrast.py:MODEL,DATASET or '
                     f'MODEL,DATASET,baseline with MODEL in {list(MODELS)} and DATASET in {list(DATASETS)}')
  model, dataset = parts[:2]
  config = base_config()
  config.name = f'contextrast_{model}_{dataset}' + ('_baseline' if parts[2:] else '')
  BUILDERS[model](config)
  if not parts[2:]:
    for stage in range(4):
      models.set_head(config.model, f'proj_{stage + 1}', HEADS.config(
          'projection', reads=(stage,), embed_dim=256, train_only=True, outputs=(f'embed_{stage + 1}',)))
    set_term(config.loss, 'contextrast', TERMS.config('contextrast', weight=0.1))
  return config
