"""OCRNet, HRNetV2-W48, PASCAL-Context 59 classes, 520x520 crops: the HRNet-OCR protocol and head.

Target: HRNet-Semantic-Segmentation (branch HRNet-OCR) HRNetV2-W48 + OCR, PASCAL-Context-59 val 56.2 mIoU
multi-scale + flip, mean over all 59 classes (README; pascal_ctx/seg_hrnet_ocr_w48_cls59_520x520_sgd_lr1e-3_wd1e-4_
bs_16_epoch200.yaml). No single-scale number is published.

Protocol: 4 GPUs x 4 images, SyncBN, 200 epochs (62,400 iterations at batch 16), SGD lr 0.001 with the heads ('cls',
'aux' and 'ocr' modules) at 10x, momentum 0.9, wd 1e-4, poly 0.9 to 0; cross-entropy over valid pixels on the OCR
logits (1.0) and the soft-region logits (0.4), align_corners True, background ignored; train rescale of the long side
to 520 x (0.5 + k / 10), k in 0..16, random 520x520 crop, flip, cv2 resizing.
Test: HRNet-OCR's 520-pixel testval (eval.combine 'hrnet_520', as configs/ocrnet_hr48_ade20k.py), single scale by
default; the target's multi-scale + flip: --config.eval.scales="(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)"
--config.eval.flip=True. (The testval resize to short side 520 with multiple-of-8 padding follows the branch's
ADE20K and COCO-Stuff datasets; the master branch's PASCAL-Context runs the original image:
--config.eval.short_side=0 --config.eval.fit_stride=1.)
Model: as configs/ocrnet_hr48_cityscapes.py, with 59 classes.

Not yet reproduced here: the ImageNet-pretrained weights (config.model.pretrained).

python -m ctxseg_jax.main --config configs/ocrnet_hr48_pcontext.py --config.data.root=/data/VOCdevkit/VOC2010
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'ocrnet_hr48_pcontext'
  stages = protocols.hrnet_ocr_520(config, 'pascal_context_59')
  protocols.ocr_on_hrnet(config, stages, width=48, flavour='hrnet_ocr')
  return config
