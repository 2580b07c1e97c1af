"""HRNetV2p-W48 baseline (FCN head on the concatenated stages), ADE20K 150 classes, 512x512 crops, 160k iterations:
the mmseg protocol.

Target: mmseg configs/hrnet/fcn_hr48_4xb4-160k_ade20k-512x512.py, 42.02 mIoU single-scale (43.86 ms+flip), mean
over classes present.

Protocol: that of configs/encnet_ade20k.py (4 GPUs x 4 images, SGD lr 0.01, wd 5e-4, poly to 1e-4, keep-ratio scale
(2048, 512) x U(0.5, 2.0), 512x512 crops with cat_max_ratio 0.75, PhotoMetricDistortion; test at scale (2048,
512), whole image), cross-entropy over all pixels, no auxiliary loss.
Model: HRNetV2p-W48 (align_corners False); FCNHead (1x1 ConvModule 720 -> 720, no dropout, 1x1 classifier) on the
concatenated stages.

Not yet reproduced here: the ImageNet-pretrained weights (config.model.pretrained). Images are scored as if
alone at their own size (eval.image_regions), except that HRNet's fusion resizes see the padding of the batch
near each image's border (bench/exact_shape.py measures how much that changes).

python -m ctxseg_jax.main --config configs/hrnet_w48_ade20k.py --config.data.root=/data/ADEChallengeData2016
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'hrnet_w48_ade20k'
  protocols.hrnet_v2_head(config, protocols.mmseg_hrnet_ade20k_160k(config), width=48)
  return config
