"""EncNet, ResNet-101-D8 (V1c stem), Cityscapes 19 classes, 512x1024 crops, 80k iterations: the mmseg protocol.

Target: mmseg configs/encnet/encnet_r101-d8_4xb2-80k_cityscapes-512x1024.py, 78.55 mIoU single-scale (79.47
ms+flip), mean over classes present (mmseg IoUMetric), on the 500 val images at full 1024x2048 resolution.

Protocol: 4 GPUs x 2 images, SyncBN, SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9 to eta_min 1e-4, no head LR
multiplier; EncHead without lateral connections, 32 codes, Dropout2d 0.1; CE weight 1.0 averaged over all pixels
(avg_non_ignore False), aux FCN 0.4, SE-loss 0.2; train resize scale (2048, 1024) x U(0.5, 2.0) (every image is
2048x1024, so this is the long side 2048 x r), crop 512x1024 with cat_max_ratio 0.75, flip,
PhotoMetricDistortion, padding with the mean colour; test: keep-ratio resize to scale (2048, 1024) (the
identity for Cityscapes images), whole image at 1024x2048.

Not yet reproduced here: the ImageNet-pretrained resnet101_v1c weights (config.model.pretrained).
Images are resized as mmseg's cv2 INTER_LINEAR does, bilinear without antialiasing (data.resize_antialias
False; cv2's fixed-point rounding can be one grey level lower). Labels are resized nearest with half-pixel
centres, src = floor((dst + 0.5) * in / out); mmseg's cv2 INTER_NEAREST takes floor(dst * in / out).

python -m ctxseg_jax.main --config configs/encnet_cityscapes.py --config.data.root=/data/cityscapes
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'encnet_cityscapes'
  shared = protocols.mmseg_cityscapes_80k(config)
  models.set_head(config.model, 'decode_head', HEADS.config('enc', reads=(1, 2, 3), num_codes=32,
                                                               lateral=False, se_head=True, **shared))
  set_term(config.loss, 'se', TERMS.config('se', output='se_logits', weight=0.2))
  return config
