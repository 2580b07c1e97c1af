"""OCRNet, HRNetV2-W48, Cityscapes 19 classes, 512x1024 crops: the HRNet-OCR protocol and head.

Target: HRNet-Semantic-Segmentation (branch HRNet-OCR) HRNetV2-W48 + OCR, Cityscapes val 81.6 mIoU single-scale,
mean over all 19 classes (README; seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml). Issues
on that repository report 80.3 with the default config: Cityscapes results vary from run to run.

Protocol: 4 GPUs x 3 images, SyncBN, 484 epochs (119,548 iterations at batch 12), SGD lr 0.01, momentum 0.9,
wd 5e-4, poly 0.9 to 0; cross-entropy over valid pixels with HRNet-OCR's Cityscapes class weights on the OCR
logits (weight 1) and on the auxiliary soft-region logits (0.4), both upsampled to the label size with
align_corners True; train rescale of the long side to 2048 x (0.5 + k / 10), k in 0..16, random 512x1024 crop
(padding 0, label ignore), flip, cv2 resizing; test (eval.combine 'hrnet'): the whole 1024x2048 image, logits
upsampled with align_corners True. Multi-scale + flip as HRNet-OCR's TEST.MULTI_SCALE (whole image at scales <= 1,
1024x2048 windows above; exp-logits summed): --config.eval.scales="(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)"
--config.eval.flip=True.
Model: HRNetV2-W48 (fusion upsampling align_corners True, convs N(0, 0.001)); the auxiliary head (1x1 conv 720 ->
720 with bias, BN, ReLU, 1x1 -> 19) runs at inference, its logits being the soft object regions; the OCR head
(3x3 conv 720 -> 512 with bias, BN, ReLU; gather; object attention with 256 key channels; 1x1 fusion 1024 -> 512;
Dropout2d 0.05; 1x1 -> 19). The heads ('cls', 'aux' and 'ocr' modules) keep PyTorch's default Conv2d init.

Not yet reproduced here: the ImageNet-pretrained HRNetV2-W48 weights (config.model.pretrained).

python -m ctxseg_jax.main --config configs/ocrnet_hr48_cityscapes.py --config.data.root=/data/cityscapes
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'ocrnet_hr48_cityscapes'
  stages = protocols.hrnet_ocr_cityscapes(config)
  protocols.ocr_on_hrnet(config, stages, width=48, flavour='hrnet_ocr')
  return config
