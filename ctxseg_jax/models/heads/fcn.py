"""mmseg FCNHead: 3x3 ConvModules, optional concat with the input, dropout, 1x1 classifier."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.heads.base import HeadType
from ctxseg_jax.models.layers.conv import INIT_STYLES, Conv, ConvBNReLU, conv2d, conv_init
from ctxseg_jax.settings import Setting

Dtype = Any
DROPOUT_MODES = ('channel', 'element')
DROPOUT_SETTINGS = {
    'dropout': Setting(0.1, 'dropout rate before the classifier; 0 disables it', rule=settings.UNIT_INTERVAL),
    'dropout_mode': Setting('channel', "'channel' (Dropout2d, mmseg) or 'element' (nn.Dropout, PyTorch-Encoding)",
                            choices=DROPOUT_MODES),
}


def classifier_dropout(rate: float, mode: str, *, train: bool, name: str = 'dropout') -> nn.Dropout | None:
  """The dropout before a segmentation classifier, or None when `rate` is 0.

  'channel' drops whole feature maps (PyTorch Dropout2d, mmseg); 'element' drops single activations
  (PyTorch Dropout, PyTorch-Encoding). Needs the 'dropout' rng when `train` is True.
  """
  if mode not in DROPOUT_MODES:
    raise ValueError(f'dropout mode {mode!r} is not supported; choose one of {list(DROPOUT_MODES)}')
  if rate <= 0:
    return None
  return nn.Dropout(rate, broadcast_dims=(1, 2) if mode == 'channel' else (), deterministic=not train, name=name)


INIT_SETTING = Setting('mmcv', "initialisation of the head's convs: 'mmcv' (Kaiming fan-out, classifier N(0, "
                       "0.01), biases 0) or 'pytorch' (nn.Conv2d defaults, as HRNet-OCR's heads)",
                       choices=INIT_STYLES)


CLASSIFIER_INPUT = 'classifier_input'


class Classifier(Conv):
  """A Conv (layers.conv) that also records its input, the features before the classifier, as
  variables['intermediates'][<path>][CLASSIFIER_INPUT] when 'intermediates' is mutable (a no-op otherwise)."""

  def __call__(self, inputs: jax.Array) -> jax.Array:
    self.sow('intermediates', CLASSIFIER_INPUT, inputs)
    return super().__call__(inputs)


def conv_seg(num_classes: int, in_channels: int, *, weight_init: str = 'mmcv', dtype: Dtype = jnp.float32,
             name: str = 'conv_seg') -> Classifier:
  """The 1x1 classifier with bias on `in_channels` (mmseg: weight N(0, 0.01), bias 0; see conv_init)."""
  return conv2d(num_classes, 1, use_bias=True, dtype=dtype, name=name, module=Classifier,
                **conv_init(weight_init, in_channels, 1, classifier=True))


def classify(y: jax.Array, num_classes: int, *, dropout: float, dropout_mode: str, weight_init: str, dtype: Dtype,
             train: bool) -> jax.Array:
  """A decode head's last step (mmseg's cls_seg): dropout, then `conv_seg` -> float32 (B, h, w, num_classes)
  logits. Call it from a head's compact method: its layers are the head's 'dropout' and 'conv_seg'."""
  layer = classifier_dropout(dropout, dropout_mode, train=train)
  if layer is not None:
    y = layer(y)
  return conv_seg(num_classes, y.shape[-1], weight_init=weight_init, dtype=dtype)(y).astype(jnp.float32)


class FCNHead(nn.Module):
  """Fully convolutional segmentation head (mmseg FCNHead, also PyTorch-Encoding's FCNHead).

  Layers: `num_convs` ConvBNReLU (in -> channels, then channels -> channels); if `concat_input`, concat
  [input, convs output] on channels and one more ConvBNReLU -> channels; dropout; `conv_seg` 1x1 ->
  num_classes. Parameter names follow mmseg: convs_0, convs_1, conv_cat, conv_seg.

  Attributes:
    num_classes: K.
    channels: width of the hidden convs.
    num_convs: number of hidden convs; 0 feeds the input straight to the classifier (mmseg then requires the
      input to have `channels` channels, and so does this head).
    concat_input: concat the input with the hidden convs' output and fuse with one more conv.
    kernel_size: kernel of the hidden convs and of the fusion conv (3 in FCN; OCRNet's auxiliary FCN uses 1).
    conv_bias: the hidden convs have a bias (HRNet-OCR's auxiliary head; mmseg's ConvModules do not).
    dropout: dropout rate before the classifier; 0 disables it.
    dropout_mode: 'channel' (Dropout2d) or 'element' (Dropout).
    weight_init: initialisation of the convs, 'mmcv' or 'pytorch' (see layers.conv.conv_init).
    dtype: compute dtype.
  """
  num_classes: int
  channels: int = 512
  num_convs: int = 2
  concat_input: bool = True
  kernel_size: int = 3
  conv_bias: bool = False
  dropout: float = 0.1
  dropout_mode: str = 'channel'
  weight_init: str = 'mmcv'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(B, h, w, C_in) features -> (B, h, w, num_classes) float32 logits."""
    if self.num_convs == 0 and x.shape[-1] != self.channels:
      raise ValueError(f'FCNHead with num_convs=0 passes its input to the classifier, so the input channels '
                       f'({x.shape[-1]}) must equal channels ({self.channels})')
    hidden = lambda name, y: ConvBNReLU(  # noqa: E731
        self.channels, self.kernel_size, use_bias=self.conv_bias, dtype=self.dtype, name=name,
        **conv_init(self.weight_init, y.shape[-1], self.kernel_size))(y, train=train)
    y = x
    for i in range(self.num_convs):
      y = hidden(f'convs_{i}', y)
    if self.concat_input:
      y = hidden('conv_cat', jnp.concatenate([x.astype(y.dtype), y], axis=-1))
    return classify(y, self.num_classes, dropout=self.dropout, dropout_mode=self.dropout_mode,
                    weight_init=self.weight_init, dtype=self.dtype, train=train)


SETTINGS = {
    'channels': Setting(512, 'width of the hidden convs', rule=settings.POSITIVE),
    'num_convs': Setting(2, 'hidden 3x3 ConvModules (PyTorch-Encoding\'s FCNHead: 1)', rule=settings.NON_NEGATIVE),
    'concat_input': Setting(True, 'concat the input with the convs\' output and fuse (mmseg; PyTorch-Encoding: no)'),
    'kernel_size': Setting(3, 'kernel of the hidden and fusion convs (OCRNet\'s auxiliary FCN: 1)',
                           rule=settings.POSITIVE),
    'conv_bias': Setting(False, 'biased hidden convs (HRNet-OCR\'s auxiliary head: True; mmseg: False)'),
    **DROPOUT_SETTINGS,
    'weight_init': INIT_SETTING,
}


def build(config, *, num_classes: int, dtype: Dtype) -> FCNHead:
  """The FCNHead of a head config (SETTINGS' keys)."""
  return FCNHead(num_classes=num_classes, channels=config.channels, num_convs=config.num_convs,
                 concat_input=config.concat_input, kernel_size=config.kernel_size, conv_bias=config.conv_bias,
                 dropout=config.dropout, dropout_mode=config.dropout_mode, weight_init=config.weight_init, dtype=dtype)


COMPONENT = HeadType(build, SETTINGS, outputs=('logits',), doc='mmseg FCNHead')
