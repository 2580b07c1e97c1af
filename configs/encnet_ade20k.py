"""EncNet, ResNet-101-D8 (V1c stem), ADE20K 150 classes, 512x512 crops, 160k iterations: the mmseg protocol.

Target: mmseg configs/encnet/encnet_r101-d8_4xb4-160k_ade20k-512x512.py, 42.61 mIoU single-scale (44.01
ms+flip), mean over classes present (mmseg IoUMetric).

Protocol: 4 GPUs x 4 images, SyncBN, SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9 to eta_min 1e-4, no head LR
multiplier; EncHead without lateral connections, 32 codes, Dropout2d 0.1; CE weight 1.0 averaged over all pixels
(avg_non_ignore False), aux FCN 0.4, SE-loss 0.2; train resize keep-ratio scale (2048, 512) x U(0.5, 2.0),
crop 512x512 with cat_max_ratio 0.75, flip, PhotoMetricDistortion, padding with the mean colour; test:
keep-ratio resize to scale (2048, 512), whole image, logits resized back and scored at the original resolution.

Not yet reproduced here: the ImageNet-pretrained resnet101_v1c weights (config.model.pretrained).
Evaluation scores each image as mmseg does, at its own size: images are batched by size (eval.shape_bucket) and
each is run as if alone in its padded batch (eval.image_regions; bench/exact_shape.py measures the agreement).
Images are resized as mmseg's cv2 INTER_LINEAR does, bilinear without antialiasing (data.resize_antialias
False; cv2's fixed-point rounding can be one grey level lower). Labels are resized nearest with half-pixel
centres, src = floor((dst + 0.5) * in / out); mmseg's cv2 INTER_NEAREST takes floor(dst * in / out).

python -m ctxseg_jax.main --config configs/encnet_ade20k.py --config.data.root=/data/ADEChallengeData2016
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'encnet_ade20k'
  shared = protocols.mmseg_ade20k_160k(config)
  models.set_head(config.model, 'decode_head', HEADS.config('enc', reads=(1, 2, 3), num_codes=32,
                                                               lateral=False, se_head=True, **shared))
  set_term(config.loss, 'se', TERMS.config('se', output='se_logits', weight=0.2))
  return config
