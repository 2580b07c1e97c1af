"""OCRNet, HRNetV2-W48, ADE20K 150 classes, 520x520 crops, OHEM: the HRNet-OCR protocol and head.

Target: HRNet-Semantic-Segmentation (branch HRNet-OCR) HRNetV2-W48 + OCR, ADE20K val 44.5 mIoU single-scale (45.5
ms+flip), mean over all 150 classes (README; seg_hrnet_ocr_w48_520x520_ohem_sgd_lr2e-2_wd1e-4_bs_16_epoch120.yaml).

Protocol: 4 GPUs x 4 images, SyncBN, 120 epochs (151,560 iterations at batch 16), SGD lr 0.02, momentum 0.9, wd
1e-4, poly 0.9 to 0, one LR for all parameters; OHEM cross-entropy on the OCR logits (thresh 0.9, at least 131,072
pixels kept, per replica of 4 images, as each GPU computes it) and plain cross-entropy on the soft-region logits
(0.4), both upsampled with align_corners True; train rescale of the long side to 520 x (0.5 + k / 10), k in 0..16,
random 520x520 crop (padding 0, label ignore), flip, cv2 resizing.
Test (eval.combine 'hrnet_520', HRNet-OCR's testval): the short side resized to 520 (cv2 linear), padded with the
mean colour to a multiple of 8; per scale the long side of that image to 520 x scale, run once padded to 520x520
with black where it fits, else in 520x520 windows every 346 pixels padded with black; exp of the logits (with flip,
of the mean of the two); summed over scales at the padded size, resized to the label (padding included), all
resizes with align_corners True. Single scale by default; the ms+flip number: --config.eval.scales="(0.5, 0.75,
1.0, 1.25, 1.5, 1.75, 2.0)" --config.eval.flip=True. Images whose long side at short side 520 exceeds 2080
(data.eval_size) are refused with a message naming that key.
Model: as configs/ocrnet_hr48_cityscapes.py, with 150 classes.

Not yet reproduced here: the ImageNet-pretrained HRNetV2-W48 weights (config.model.pretrained).

python -m ctxseg_jax.main --config configs/ocrnet_hr48_ade20k.py --config.data.root=/data/ADEChallengeData2016
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'ocrnet_hr48_ade20k'
  stages = protocols.hrnet_ocr_520(config, 'ade20k')
  protocols.ocr_on_hrnet(config, stages, width=48, flavour='hrnet_ocr')
  return config
