"""Contextrast (Sung et al., CVPR 2024) on DeepLabV3, HRNetV2 and OCRNet: the paper's grid, one cell per argument.

  python -m ctxseg_jax.main --config configs/contextrast.py:deeplabv3_r101,cityscapes            # Contextrast on
  python -m ctxseg_jax.main --config configs/contextrast.py:deeplabv3_r101,cityscapes,baseline   # the same without

Models: `deeplabv3_r101` (mmseg DeepLabV3 R-101-D8: ASPP head and auxiliary FCN head), `hrnet_w48` (mmseg
fcn_hr48: HRNetV2p-W48 and its 1x1 head) and `ocrnet_hr48` (mmseg OCRNet HRNetV2p-W48). Datasets, with Contextrast++
Table II's training (SGD momentum 0.9, wd 5e-4, poly to 1e-4; protocols.contextrast_grid) on mmseg's pipelines
(keep-ratio rescale x U(0.5, 2.0), crop with cat_max_ratio 0.75, flip, PhotoMetricDistortion, mean-colour padding):
  `cityscapes`  512x1024 crops of (2048, 1024), batch 8, 40k, lr 0.01; whole-image test.
  `camvid`      360x480 crops of (480, 360), batch 16, 6k, lr 0.02; scored on the 233 test images (which split
                the paper scores is not stated; the test split is the usual one).
  `ade20k`      512x512 crops of (2048, 512), batch 12, 80k, lr 0.01.
  `pcontext`    PASCAL-Context 59 classes, 512x512 crops of (520, 520) (mmseg's scale; its own configs crop 480),
                batch 16, 60k, lr 0.01.
  `coco_stuff`  COCO-Stuff-10k (9000 train / 1000 test images, as the CVPR paper's), 512x512 crops of (2048, 512),
                batch 16, 60k, lr 0.01.
The CVPR paper tested CamVid, ADE20K, PASCAL-Context and COCO-Stuff multi-scale (0.75-2.0) with flip and Cityscapes
single-scale. Every cell evaluates single-scale on the whole image (as periodic evaluation during training should);
the paper's multi-scale protocol is --config.eval.scales="(0.75, 1.0, 1.25, 1.5, 1.75, 2.0)" --config.eval.flip=True
(mmseg's combination: softmax averaged; the feature metrics stay those of the whole image at scale 1).

Targets (mIoU; Contextrast++ Table III, the same authors' re-report of the CVPR paper), baseline -> Contextrast:
  | model          | cityscapes      | camvid          | ade20k          | pcontext        | coco_stuff      |
  | deeplabv3_r101 | 77.12 -> 79.35  | 78.80 -> 79.98  | 42.85 -> 44.12  | 52.83 -> 53.81  | 36.04 -> 36.55  |
  | hrnet_w48      | 78.48 -> 82.20  | 82.17 -> 84.33  | 41.52 -> 42.68  | 51.96 -> 52.91  | 36.04 -> 36.34  |
  | ocrnet_hr48    | 79.95 -> 81.94  | 82.69 -> 84.10  | 41.29 -> 42.87  | 53.25 -> 53.82  | 38.08 -> 38.34  |
The Cityscapes baselines of DeepLabV3 and HRNet are mmseg's model-zoo numbers at 40k; mmseg's OCRNet HRNetV2p-W48
at 40k scores 80.58 (ms+flip 81.79), not 79.95.

Contextrast: a training-only projection head (ContrastiveSeg's convmlp to 256, L2-normalised) on each of the four
encoder layers (ResNet stages 1-4; HRNet's four branches) and the pixel-anchor term weighted alpha = 0.1 with the
term's defaults (ctxseg_jax/losses/contextrast.py: lambda 0.1, 0.4, 0.7, 1.0 from layer 1 to 4, tau 0.1, anchors
mixed 0.5 / 0.5 with the last layer's and normalised, 256 negatives per anchor with BANE's first, K = 50%, BANE
error maps per true class). At inference the model is exactly the baseline's.

Not yet reproduced here: the ImageNet-pretrained backbones (config.model.pretrained).
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.heads import HEADS

MODELS = ('deeplabv3_r101', 'hrnet_w48', 'ocrnet_hr48')
DATASETS = tuple(protocols.CONTEXTRAST_SCHEDULES)


def _deeplabv3_r101(config, dataset):
  shared = protocols.contextrast_grid(config, dataset, 'r101_d8')
  models.set_head(config.model, 'decode_head', HEADS.config('aspp', reads=(3,), dilations=(1, 12, 24, 36), **shared))


def _hrnet_w48(config, dataset):
  protocols.hrnet_v2_head(config, protocols.contextrast_grid(config, dataset, 'hrnet_w48'), width=48)


def _ocrnet_hr48(config, dataset):
  protocols.ocr_on_hrnet(config, protocols.contextrast_grid(config, dataset, 'hrnet_w48'), width=48, flavour='mmseg')


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
  BUILDERS[model](config, dataset)
  if not parts[2:]:
    for stage in range(4):
      models.set_head(config.model, f'proj_{stage + 1}', HEADS.config(
          'projection', reads=(stage,), embed_dim=256, train_only=True, outputs=(f'embed_{stage + 1}',)))
    set_term(config.loss, 'contextrast', TERMS.config('contextrast', weight=0.1))
  return config
