"""OCRNet, HRNetV2-W48, COCO-Stuff-10k 171 classes, 520x520 crops, OHEM: the HRNet-OCR protocol and head.

Target: HRNet-Semantic-Segmentation (branch HRNet-OCR) HRNetV2-W48 + OCR, COCO-Stuff test 39.7 mIoU single-scale
(40.6 ms+flip), mean over all 171 classes (README; cocostuff/seg_hrnet_ocr_w48_520x520_ohem_sgd_lr1e-3_wd1e-4_bs_16_
epoch110.yaml).

Protocol: 4 GPUs x 4 images, SyncBN, 110 epochs (61,820 iterations at batch 16), SGD lr 0.001 with the heads at
10x, momentum 0.9, wd 1e-4, poly 0.9 to 0; OHEM cross-entropy on the OCR logits (thresh 0.9, at least 131,072
pixels per replica of 4 images) and plain cross-entropy on the soft-region logits (0.4), align_corners True; train
rescale of the long side to 520 x (0.5 + k / 10), k in 0..16, random 520x520 crop, flip, cv2 resizing.
Data: the 9000 train / 1000 test images of COCO-Stuff-10k (mmseg's converter, from the release's image lists);
HRNet-OCR reads its own train.lst / testval.lst of the same sizes, with the same label mapping (unlabeled ignored,
the 171 classes ranked).
Model: as configs/ocrnet_hr48_cityscapes.py, with 171 classes.

Test: HRNet-OCR's 520-pixel testval (eval.combine 'hrnet_520', as configs/ocrnet_hr48_ade20k.py), except that
COCO-Stuff's testval crops the multiple-of-8 padding from the summed scores before resizing them to the label
(eval.crop_fit_padding); single scale by default, ms+flip: --config.eval.scales="(0.5, 0.75, 1.0, 1.25, 1.5, 1.75,
2.0)" --config.eval.flip=True. Testval images longer than 1040 at short side 520 are refused (data.eval_size).

Not yet reproduced here: the ImageNet-pretrained weights (config.model.pretrained).

python -m ctxseg_jax.main --config configs/ocrnet_hr48_coco_stuff10k.py --config.data.root=/data/coco_stuff10k
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'ocrnet_hr48_coco_stuff10k'
  stages = protocols.hrnet_ocr_520(config, 'coco_stuff10k')
  protocols.ocr_on_hrnet(config, stages, width=48, flavour='hrnet_ocr')
  return config
