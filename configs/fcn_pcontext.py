"""FCN baseline for configs/encnet_pcontext.py: PyTorch-Encoding's FCN (ResNet-101s), PASCAL-Context 59 classes,
with exactly the EncNet run's protocol, so the pair isolates the Context Encoding Module and the SE-loss.

PyTorch-Encoding's FCN head is one 3x3 conv 2048 -> 512 + BN + ReLU, dropout 0.1 (element-wise), 1x1 classifier
(FCNHead(2048): num_convs 1, no input concat); EncNet's head starts with the same conv. The auxiliary FCN head on
stage 3 is kept (weight 0.2) as in the EncNet run.

Published numbers: PyTorch-Encoding lists no FCN result for PASCAL-Context. The nearest is mmseg's FCN R-101-D8,
PASCAL-Context 59, 480x480, 80k iterations: 49.35 mIoU single-scale (51.38 ms+flip), with mmseg's protocol (V1c
stem, 2-conv head with input concat, lr 0.004, 80k x 16 images, mean over present classes), so it is a reference
point, not a target for this config.

See configs/encnet_pcontext.py for the protocol and what is not reproduced yet.
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models.heads import HEADS


def get_config():
  config = base_config()
  config.name = 'fcn_pcontext'
  shared = protocols.pytorch_encoding_pcontext(config)
  models.set_head(config.model, 'decode_head', HEADS.config('fcn', reads=(3,), num_convs=1,
                                                               concat_input=False, **shared))
  return config
