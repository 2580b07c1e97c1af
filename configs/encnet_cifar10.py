"""EncNet for image classification: the 14-layer network with Context Encoding Modules on CIFAR-10.

Target: 3.45% test error (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018, the CIFAR-10
experiment: "Our 14 layer network has achieved an error rate of 3.45%"); PyTorch-Encoding's documentation gives 3.35%
for its released EncNet-32k128d checkpoint of the same network.

Architecture (PyTorch-Encoding experiments/recognition, model `encnetdrop` with --widen 8 --ncodes 32; the layer list
is written out in tests/test_param_counts.py, 16,788,234 parameters): a 3x3 conv 3 -> 128 with bias, BN, ReLU; three
stages of two post-activation basic blocks, 128, 256 and 512 wide (strides 1, 2, 2; a 1x1 conv with bias projects
the shortcut where the shape changes); in every block, before the shortcut is added, a Context Encoding Module: 1x1
conv to C/4 with bias, BN, ReLU, Encoding layer with 32 codewords, the 32 x C/4 encodings flattened and
L2-normalised, Linear to C, sigmoid, channels scaled by it ("32k128d": 32 codes of 128 dimensions in the last
stage); then BN, ReLU, global average pooling and Linear 512 -> 10 (the 'classifier' head). The regularisation is
EncDrop: the Encoding layers' smoothing factors are drawn from U(-1, 0) at every training step and fixed at -0.5 at
test time (PyTorch-Encoding's EncodingDrop). No SE-loss: the recognition code trains with cross-entropy alone (an
image's class presence vector is its one-hot label). Without the modules (the paper's baseline of the same depth):
--config.model.backbone.num_codes=0.

Protocol (python main.py --dataset cifar10 --model encnetdrop --widen 8 --ncodes 32 --lr-scheduler cos --epochs 600,
with the defaults of its option.py: batch 128, SGD lr 0.1, momentum 0.9, weight decay 5e-4; test batch 256): 600
epochs of the 50000 training images = 234375 steps at batch 128, the LR decayed per iteration by the cosine
0.5 x 0.1 x (1 + cos(pi t / T)); random 32x32 crops of the image padded with 4 black pixels on every side,
horizontal flips, per-channel normalisation with the usual CIFAR-10 statistics (mean 0.4914, 0.4822, 0.4465, std
0.2023, 0.1994, 0.2010: the reference loader's constants are not confirmed here). Error = 100 - top-1 accuracy on
the 10000 test images, evaluated whole.

python -m ctxseg_jax.main --config configs/encnet_cifar10.py --config.data.root=/data/cifar-10-batches-bin
(or TFDS: --config.data.name=cifar10_tfds --config.data.tfds_data_dir=<where `tfds build cifar10` put it>)
"""
from ctxseg_jax import protocols
from ctxseg_jax.config import base_config


def get_config():
  config = base_config()
  config.name = 'encnet_cifar10'
  protocols.pytorch_encoding_cifar10(config)
  return config
