"""EncNet, ResNet-101s, PASCAL-Context 59 classes, with the PyTorch-Encoding protocol.

Target: PyTorch-Encoding model zoo EncNet_ResNet101s_PContext, mIoU 54.1 / pixAcc 80.7 (59 classes, mean over all
classes, multi-scale + flip sliding-window evaluation: scales 0.5-1.75, crop 480). Single-scale evaluation, as
here, is expected a few points lower. The paper's 51.7 (quoted in mmseg's EncNet README) may use another class
convention: PASCAL-Context numbers differ by about 6 points between 59 and 60 classes.

Protocol (train.py --dataset pcontext --model encnet --aux --se-loss --backbone resnet101s): 4 GPUs x 4 images,
SyncBN, 80 epochs, SGD lr 0.001 per 16 images (x10 for head and auxiliary head), momentum 0.9, wd 1e-4, poly 0.9
to 0, aux weight 0.2, SE weight 0.2, lateral connections on (PyTorch-Encoding enables them for "p*" datasets),
element-wise dropout 0.1, cross-entropy over valid pixels, base size 520 (long side) x U(0.5, 2.0), crop 480.

Evaluation (eval.combine 'pte', PyTorch-Encoding's MultiEvalModule): for each scale 0.5-1.75, the long side
resized to ceil(520 x scale) (align_corners True), 480x480 windows every 320 pixels padded with black, exp(logits +
mirrored logits) summed over windows and scales, scored at the original resolution (PASCAL images are at most
500x500: eval_label_size). Single scale: --config.eval.scales="(1.0,)" (still sliding and flipped, as
PyTorch-Encoding's own single-scale test). Not yet reproduced here: the ImageNet-pretrained resnet101s weights
(config.model.pretrained). Training images are resized with PIL's bilinear (data.resize_antialias True), as
PyTorch-Encoding does.
PyTorch-Encoding's 80 x 312 = 24960 iterations drop the last partial batch of each epoch; the protocol's step
count (24990) rounds up.

python -m ctxseg_jax.main --config configs/encnet_pcontext.py --config.data.root=/data/VOCdevkit/VOC2010
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'encnet_pcontext'
  shared = protocols.pytorch_encoding_pcontext(config)
  models.set_head(config.model, 'decode_head', HEADS.config('enc', reads=(1, 2, 3), num_codes=32,
                                                               lateral=True, se_head=True, **shared))
  set_term(config.loss, 'se', TERMS.config('se', output='se_logits', weight=0.2))
  return config
