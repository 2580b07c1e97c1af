"""PyTorch reference forms of this project's ResNet models, losses and SGD step, built from its config dicts.

The modules are written from the reference architectures (PyTorch-Encoding's dilated `resnet*s` with its deep
stem, `FCNHead`, `EncHead` with `EncModule` and the `Encoding` layer, the auxiliary FCN head) and mirror
ctxseg_jax's models layer for layer: the same layers, shapes, parameter count and initialisation, NCHW. Module and
parameter names are PyTorch-Encoding's (`pretrained.layer3.0.conv2.weight`, `head.encmodule.encoding.3.codewords`,
`auxlayer.conv5.0.weight`), so its checkpoints load into them; ctxseg_jax's names map as backbone -> pretrained,
decode_head -> head, aux_head -> auxlayer (`TORCH_NAMES`). The ResNet has no classifier (`fc`): the segmentation
models do not use it, and ctxseg_jax's backbone has none.

Numerics follow ctxseg_jax where it costs nothing: BatchNorm momentum 0.1 and eps 1e-5 (PyTorch's defaults, the
same as ctxseg_jax's), bilinear resizes with the config's corner convention, the dataset's ignore index, the
config's loss weights, the SE-loss target (classes present in each label map, ignore excluded) with BCE on logits,
PyTorch SGD (weight decay added to the gradient, momentum without dampening) with the config's per-group LR
multipliers and polynomial schedule. The Encoding layer is computed in the (B, N, K, D) broadcast form, as
PyTorch-Encoding's CPU kernels and mmseg write it.

For the weight-import parity checks (tests/test_weights.py, bench/weight_parity.py) `build_model` also names the
modules of other published layouts: mmseg's (ResNetV1c or HRNetV2; FCNHead, EncHead, ASPPHead), mmseg's OCRNet
(CascadeEncoderDecoder: `decode_head.0` the soft-region FCNHead, `decode_head.1` the OCRHead) and HRNet-OCR's
(seg_hrnet_ocr.py's HighResolutionNet with conv3x3_ocr, ocr_distri_head, cls_head and aux_head, inside its
FullModel); their forward passes are the eval-mode ones these checks compare.

Used by bench/train_step.py (timing); built from `config.model.to_dict()`, `config.loss.to_dict()` and
`config.optim.to_dict()` so that it needs neither JAX nor ctxseg_jax. The training step covers only what the
PyTorch-Encoding protocol uses (ResNet-50/101/152 backbones, 'fcn' heads without input concat, 'enc' heads,
'cross_entropy' and 'se' loss terms); anything else raises NotImplementedError.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ctxseg_jax module name -> this module's attribute (PyTorch-Encoding's names).
TORCH_NAMES = {'backbone': 'pretrained', 'decode_head': 'head', 'aux_head': 'auxlayer'}
BLOCK_COUNTS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# output_stride -> (per-stage strides, per-stage dilations), as ctxseg_jax.models.backbones.resnet.
STAGE_STRIDES_DILATIONS = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}


def _unsupported(what: str) -> NotImplementedError:
  return NotImplementedError(f'bench/torch_reference.py has no PyTorch form of {what}')


def kaiming_fan_out_(weight: torch.Tensor) -> None:
  """Kaiming normal, fan-out, ReLU gain (mmcv's kaiming_init, PyTorch-Encoding's ResNet init, ctxseg_jax's
  KAIMING_FAN_OUT)."""
  nn.init.kaiming_normal_(weight, mode='fan_out', nonlinearity='relu')


def conv_bn_relu(cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 bias: bool = False) -> list[nn.Module]:
  """[Conv2d (padding dilation * (k - 1) // 2), BatchNorm2d, ReLU], the layers of a ConvModule."""
  return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                    bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def head_conv_init_(module: nn.Module, style: str) -> None:
  """ctxseg_jax's head init (layers.conv.conv_init): 'mmcv' Kaiming fan-out kernels, biases 0, BN 1/0 (classifiers
  are set by their head); 'pytorch' leaves nn.Conv2d's own init."""
  if style == 'pytorch':
    return
  if style != 'mmcv':
    raise _unsupported(f'head init {style!r}')
  for m in module.modules():
    if isinstance(m, nn.Conv2d):
      kaiming_fan_out_(m.weight)
      if m.bias is not None:
        nn.init.zeros_(m.bias)


def classifier_init_(conv: nn.Conv2d, style: str) -> None:
  """mmseg's conv_seg: weight N(0, 0.01), bias 0 ('mmcv'); nn.Conv2d's own init ('pytorch')."""
  if style == 'mmcv':
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)


def dropout(rate: float, mode: str) -> nn.Module:
  """Dropout before a classifier: 'element' nn.Dropout (PyTorch-Encoding), 'channel' nn.Dropout2d (mmseg)."""
  if mode not in ('element', 'channel'):
    raise _unsupported(f'dropout mode {mode!r}')
  return nn.Dropout(rate, inplace=False) if mode == 'element' else nn.Dropout2d(rate, inplace=False)


# ------------------------------------------------------------------------------------------------ backbone


def block_plan(depth: int, output_stride: int, contract_dilation: bool) -> list[list[tuple[int, int]]]:
  """Per stage, the (stride, dilation) of each block (ctxseg_jax.models.backbones.resnet.block_plan; PyTorch-
  Encoding's dilated _make_layer: the first block of a stage dilated by 2 or 4 uses 1 or 2)."""
  strides, dilations = STAGE_STRIDES_DILATIONS[output_stride]
  plan = []
  for blocks, stride, dilation in zip(BLOCK_COUNTS[depth], strides, dilations):
    first = dilation // 2 if contract_dilation and dilation > 1 else dilation
    plan.append([(stride, first)] + [(1, dilation)] * (blocks - 1))
  return plan


class Bottleneck(nn.Module):
  """PyTorch-Encoding's Bottleneck: 1x1, 3x3 (stride, dilation), 1x1 x4, each with BN; a 1x1 + BN projection
  (`downsample`) when the shape changes."""
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(planes * 4))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    residual = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + residual)


class ResNet(nn.Module):
  """PyTorch-Encoding's dilated ResNet without avgpool and fc, returning the four stage outputs [c1, c2, c3, c4].

  Stem: 's' (PyTorch-Encoding's deep stem: conv1 = 3x3 convs w (stride 2), w, 2w with BN + ReLU between, then
  bn1, ReLU), 'v1c' (the same with widths w/2, w/2, w: mmseg ResNetV1c, timm resnet50c) or 'pytorch' (one 7x7
  stride-2 conv and bn1, torchvision); then a 3x3 stride-2 max-pool. `layout` 'torch' names a deep stem as above
  (PyTorch-Encoding, timm); 'mmseg' as mmcv's ResNetV1c, stem = Sequential((conv, bn, relu) x 3), no bn1.
  Initialised as ctxseg_jax's: Kaiming fan-out convs, BN scale 1 and bias 0, the last BN of each block at scale 0
  with `zero_init_residual`.
  """

  def __init__(self, depth: int = 50, stem: str = 's', base_width: int = 64, output_stride: int = 8,
               contract_dilation: bool = True, zero_init_residual: bool = True, layout: str = 'torch'):
    super().__init__()
    if depth not in BLOCK_COUNTS:
      raise _unsupported(f'ResNet-{depth} (Bottleneck depths only: {sorted(BLOCK_COUNTS)})')
    if layout not in ('torch', 'mmseg'):
      raise _unsupported(f'ResNet layout {layout!r}')
    w = base_width
    if stem == 'pytorch':
      self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
      inplanes = w
    elif stem in ('s', 'v1c'):
      widths = (w, w, 2 * w) if stem == 's' else (w // 2, w // 2, w)
      layers = []
      for cin, cout in zip((3,) + widths[:2], widths):
        layers += [nn.Conv2d(cin, cout, 3, stride=2 if cin == 3 else 1, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(True)]
      if layout == 'mmseg':  # mmcv ResNetV1c: stem = (conv, bn, relu) x 3
        self.stem = nn.Sequential(*layers)
      else:  # PyTorch-Encoding, timm: the last BN + ReLU are bn1, relu
        self.conv1 = nn.Sequential(*layers[:-2])
      inplanes = widths[2]
    else:
      raise _unsupported(f'ResNet stem {stem!r}')
    if not hasattr(self, 'stem'):
      self.bn1 = nn.BatchNorm2d(inplanes)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    for stage, blocks in enumerate(block_plan(depth, output_stride, contract_dilation)):
      layers = []
      for stride, dilation in blocks:
        layers.append(Bottleneck(inplanes, w * 2**stage, stride, dilation))
        inplanes = w * 2**stage * Bottleneck.expansion
      setattr(self, f'layer{stage + 1}', nn.Sequential(*layers))
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        kaiming_fan_out_(m.weight)
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    if zero_init_residual:
      for m in self.modules():
        if isinstance(m, Bottleneck):
          nn.init.zeros_(m.bn3.weight)

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    x = self.maxpool(self.stem(x) if hasattr(self, 'stem') else self.relu(self.bn1(self.conv1(x))))
    outputs = []
    for stage in range(4):
      x = getattr(self, f'layer{stage + 1}')(x)
      outputs.append(x)
    return outputs


# ------------------------------------------------------------------------------------------------ heads


class FCNHead(nn.Module):
  """PyTorch-Encoding's FCNHead, `conv5` = [3x3 conv (no bias) -> channels, BN, ReLU] x num_convs, dropout,
  1x1 classifier with bias (PyTorch-Encoding: one conv, in_channels / 4 wide, nn.Dropout(0.1))."""

  def __init__(self, in_channels: int, num_classes: int, *, channels: int, num_convs: int = 1, kernel_size: int = 3,
               conv_bias: bool = False, dropout_rate: float = 0.1, dropout_mode: str = 'element',
               weight_init: str = 'mmcv'):
    super().__init__()
    layers: list[nn.Module] = []
    cin = in_channels
    for _ in range(num_convs):
      layers += conv_bn_relu(cin, channels, kernel_size, bias=conv_bias)
      cin = channels
    if dropout_rate > 0:
      layers.append(dropout(dropout_rate, dropout_mode))
    layers.append(nn.Conv2d(cin, num_classes, 1))
    self.conv5 = nn.Sequential(*layers)
    head_conv_init_(self, weight_init)
    classifier_init_(layers[-1], weight_init)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {'logits': self.conv5(x)}


class Encoding(nn.Module):
  """PyTorch-Encoding's Encoding layer: codewords (K, D) ~ U(+-1/sqrt(K D)), scale (K,) ~ U(-1, 0); (B, D, H, W)
  -> E (B, K, D) = sum_n softmax_k(s_k ||x_n - c_k||^2) (x_n - c_k), with the (B, N, K, D) residuals
  materialised (its CPU kernels and mmseg do the same)."""

  def __init__(self, channels: int, num_codes: int):
    super().__init__()
    self.channels, self.num_codes = channels, num_codes
    bound = 1.0 / math.sqrt(num_codes * channels)
    self.codewords = nn.Parameter(torch.empty(num_codes, channels).uniform_(-bound, bound))
    self.scale = nn.Parameter(torch.empty(num_codes).uniform_(-1, 0))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, d = x.shape[:2]
    x = x.view(b, d, -1).transpose(1, 2)  # (B, N, D)
    residual = x.unsqueeze(2) - self.codewords.view(1, 1, self.num_codes, d)  # (B, N, K, D)
    assign = F.softmax(self.scale.view(1, 1, self.num_codes) * residual.pow(2).sum(dim=3), dim=2)
    return (assign.unsqueeze(3) * residual).sum(dim=1)


class Mean(nn.Module):

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x.mean(self.dim)


class EncModule(nn.Module):
  """PyTorch-Encoding's EncModule: `encoding` = [1x1 conv, BN, ReLU, Encoding, BatchNorm1d(K), ReLU, mean over
  codes], `fc` = [Linear C -> C, sigmoid]; output ReLU(x + x * gamma), and `selayer(encoded)` (Linear C ->
  classes) in training when `se_head`."""

  def __init__(self, channels: int, num_classes: int, num_codes: int, se_head: bool):
    super().__init__()
    self.encoding = nn.Sequential(*conv_bn_relu(channels, channels, 1), Encoding(channels, num_codes),
                                  nn.BatchNorm1d(num_codes), nn.ReLU(inplace=True), Mean(dim=1))
    self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())
    self.selayer = nn.Linear(channels, num_classes) if se_head else None

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    encoded = self.encoding(x)
    gamma = self.fc(encoded)
    out = F.relu_(x + x * gamma.view(*gamma.shape, 1, 1))
    return out, (self.selayer(encoded) if self.selayer is not None and self.training else None)


class EncHead(nn.Module):
  """PyTorch-Encoding's EncHead: `conv5` 3x3 ConvModule on the last input -> C; with `lateral`, `connect` 1x1
  ConvModules -> C on the two earlier inputs (resized bilinearly to conv5's size when they differ) and `fusion`
  3x3 ConvModule on the concatenation; `encmodule`; `conv6` = [dropout, 1x1 classifier]. Convs as mmseg's (Kaiming
  fan-out, classifier N(0, 0.01)); Linear layers and the Encoding layer keep their PyTorch init."""

  def __init__(self, in_channels: Sequence[int], num_classes: int, *, channels: int = 512, num_codes: int = 32,
               lateral: bool = True, se_head: bool = True, dropout_rate: float = 0.1, dropout_mode: str = 'element'):
    super().__init__()
    *earlier, last = in_channels
    if lateral and len(earlier) != 2:
      raise ValueError(f'EncHead with lateral connections reads three stages; got {len(in_channels)}')
    self.lateral = lateral
    self.conv5 = nn.Sequential(*conv_bn_relu(last, channels, 3))
    if lateral:
      self.connect = nn.ModuleList([nn.Sequential(*conv_bn_relu(c, channels, 1)) for c in earlier])
      self.fusion = nn.Sequential(*conv_bn_relu(3 * channels, channels, 3))
    self.encmodule = EncModule(channels, num_classes, num_codes, se_head)
    layers = ([dropout(dropout_rate, dropout_mode)] if dropout_rate > 0 else []) + [nn.Conv2d(channels, num_classes, 1)]
    self.conv6 = nn.Sequential(*layers)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        kaiming_fan_out_(m.weight)
    classifier_init_(layers[-1], 'mmcv')

  def forward(self, features: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    features = [features] if isinstance(features, torch.Tensor) else list(features)
    *earlier, last = features
    feat = self.conv5(last)
    if self.lateral:
      size = feat.shape[2:]
      laterals = [connect(x) for connect, x in zip(self.connect, earlier)]
      laterals = [y if y.shape[2:] == size else F.interpolate(y, size, mode='bilinear', align_corners=False)
                  for y in laterals]
      feat = self.fusion(torch.cat([feat, *laterals], dim=1))
    feat, se_logits = self.encmodule(feat)
    outputs = {'logits': self.conv6(feat)}
    if se_logits is not None:
      outputs['se_logits'] = se_logits
    return outputs


class ConvModule(nn.Module):
  """mmcv's ConvModule: `conv` (no bias), `bn`, ReLU (keys x.conv.weight, x.bn.running_var)."""

  def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=False)
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.relu(self.bn(self.conv(x)))


class MmsegFCNHead(nn.Module):
  """mmseg's FCNHead: `convs` (ConvModules), `conv_cat` on [input, convs output] with concat_input, Dropout2d,
  `conv_seg` 1x1 with bias."""

  def __init__(self, in_channels: int, num_classes: int, *, channels: int, num_convs: int = 2,
               concat_input: bool = True, kernel_size: int = 3, dropout_rate: float = 0.1):
    super().__init__()
    self.convs = nn.Sequential(*[ConvModule(in_channels if i == 0 else channels, channels, kernel_size)
                                 for i in range(num_convs)])
    self.conv_cat = ConvModule(in_channels + channels, channels, kernel_size) if concat_input else None
    self.dropout = nn.Dropout2d(dropout_rate) if dropout_rate > 0 else nn.Identity()
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    y = self.convs(x)
    if self.conv_cat is not None:
      y = self.conv_cat(torch.cat([x, y], dim=1))
    return {'logits': self.conv_seg(self.dropout(y))}


class MmsegEncModule(nn.Module):
  """mmseg's EncModule: `encoding_project` ConvModule 1x1, `encoding` = [Encoding, BatchNorm1d(K), ReLU] then the
  mean over codes, `fc` = [Linear, Sigmoid]; returns (encoded (B, C), ReLU(x + x * gamma))."""

  def __init__(self, channels: int, num_codes: int):
    super().__init__()
    self.encoding_project = ConvModule(channels, channels, 1)
    self.encoding = nn.Sequential(Encoding(channels, num_codes), nn.BatchNorm1d(num_codes), nn.ReLU(inplace=True))
    self.fc = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = self.encoding(self.encoding_project(x)).mean(dim=1)
    gamma = self.fc(encoded)
    return encoded, F.relu(x + x * gamma.view(*gamma.shape, 1, 1))


class MmsegEncHead(nn.Module):
  """mmseg's EncHead: `bottleneck` 3x3 ConvModule on the last input; with `lateral`, `lateral_convs` 1x1 on the
  earlier inputs (resized bilinearly, align_corners False) and `fusion` 3x3 on the concatenation; `enc_module`;
  Dropout2d and `conv_seg`; `se_layer` (Linear C -> classes) on the encoding in training."""

  def __init__(self, in_channels: Sequence[int], num_classes: int, *, channels: int = 512, num_codes: int = 32,
               lateral: bool = False, se_head: bool = True, dropout_rate: float = 0.1, dropout_mode: str = 'channel'):
    super().__init__()
    *earlier, last = in_channels
    self.lateral = lateral
    self.bottleneck = ConvModule(last, channels, 3)
    if lateral:
      self.lateral_convs = nn.ModuleList([ConvModule(c, channels, 1) for c in earlier])
      self.fusion = ConvModule(channels * (1 + len(earlier)), channels, 3)
    self.enc_module = MmsegEncModule(channels, num_codes)
    self.dropout = dropout(dropout_rate, dropout_mode) if dropout_rate > 0 else nn.Identity()
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)
    self.se_layer = nn.Linear(channels, num_classes) if se_head else None

  def forward(self, features: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    features = [features] if isinstance(features, torch.Tensor) else list(features)
    feat = self.bottleneck(features[-1])
    if self.lateral:
      laterals = [F.interpolate(conv(x), feat.shape[2:], mode='bilinear', align_corners=False)
                  for conv, x in zip(self.lateral_convs, features[:-1])]
      feat = self.fusion(torch.cat([feat, *laterals], dim=1))
    encoded, feat = self.enc_module(feat)
    outputs = {'logits': self.conv_seg(self.dropout(feat))}
    if self.se_layer is not None and self.training:
      outputs['se_logits'] = self.se_layer(encoded)
    return outputs


class MmsegASPPHead(nn.Module):
  """mmseg's ASPPHead (DeepLabV3): `image_pool` = [global average pool, ConvModule 1x1] broadcast back, one
  ConvModule per dilation (`aspp_modules`, 1x1 for dilation 1, else 3x3 dilated), `bottleneck` 3x3 on the
  concatenation [pool, branches], Dropout2d, `conv_seg`."""

  def __init__(self, in_channels: int, num_classes: int, *, channels: int, dilations: Sequence[int],
               dropout_rate: float = 0.1):
    super().__init__()
    self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
    self.aspp_modules = nn.ModuleList([ConvModule(in_channels, channels, 1 if d == 1 else 3, d) for d in dilations])
    self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3)
    self.dropout = nn.Dropout2d(dropout_rate) if dropout_rate > 0 else nn.Identity()
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outs = [self.image_pool(x).expand(-1, -1, *x.shape[2:])] + [module(x) for module in self.aspp_modules]
    return {'logits': self.conv_seg(self.dropout(self.bottleneck(torch.cat(outs, dim=1))))}


# ------------------------------------------------------------------------------------------------ HRNet

# ctxseg_jax.models.backbones.hrnet.DEPTHS: stage 1 Bottlenecks, then (modules, branches, blocks) of stages 2-4.
HRNET_DEPTHS = {'full': (4, ((1, 2, 4), (4, 3, 4), (3, 4, 4))), 'small': (2, ((1, 2, 2), (3, 3, 2), (2, 4, 2)))}


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN, identity shortcut (HRNet's branches keep their width)."""
  expansion = 1

  def __init__(self, planes: int):
    super().__init__()
    self.conv1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
  layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False), nn.BatchNorm2d(cout)]
  return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


class HighResolutionModule(nn.Module):
  """One HRNet module: `branches[i]` (BasicBlocks), `fuse_layers[i][j]`: for j > i a 1x1 conv + BN then a bilinear
  upsample; for j < i, i - j 3x3 stride-2 conv + BN (ReLU between them); summed, ReLU."""

  def __init__(self, widths: Sequence[int], num_blocks: int, align_corners: bool):
    super().__init__()
    self.align_corners = align_corners
    self.branches = nn.ModuleList([nn.Sequential(*[BasicBlock(w) for _ in range(num_blocks)]) for w in widths])
    fuse = []
    for i, wi in enumerate(widths):
      row = []
      for j, wj in enumerate(widths):
        if j > i:
          row.append(_conv_bn(wj, wi, 1, relu=False))
        elif j < i:
          row.append(nn.Sequential(*[_conv_bn(wj, wi if k == i - j - 1 else wj, 3, 2, relu=k != i - j - 1)
                                     for k in range(i - j)]))
        else:
          row.append(None)
      fuse.append(nn.ModuleList(row))
    self.fuse_layers = nn.ModuleList(fuse)

  def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    xs = [branch(x) for branch, x in zip(self.branches, xs)]
    fused = []
    for i, row in enumerate(self.fuse_layers):
      total = xs[i]
      for j, layer in enumerate(row):
        if j > i:
          total = total + F.interpolate(layer(xs[j]), xs[i].shape[2:], mode='bilinear',
                                        align_corners=self.align_corners)
        elif j < i:
          total = total + layer(xs[j])
      fused.append(F.relu(total))
    return fused


class HRNet(nn.Module):
  """HRNetV2 in the ImageNet checkpoints' layout (HRNet-Image-Classification, mmseg, timm) without the
  classification modules: conv1/bn1/conv2/bn2 (3x3 stride 2, 64 wide), layer1 (Bottlenecks), transitionK,
  stageK (HighResolutionModules); returns the four branches of the last module."""

  def __init__(self, width: int = 48, depth: str = 'full', align_corners: bool = True):
    super().__init__()
    stage1_blocks, stages = HRNET_DEPTHS[depth]
    self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64)
    self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64)
    self.layer1 = nn.Sequential(*[Bottleneck(64 if b == 0 else 256, 64) for b in range(stage1_blocks)])
    previous = [256]
    for stage, (num_modules, num_branches, num_blocks) in enumerate(stages, start=2):
      widths = [width * 2**i for i in range(num_branches)]
      transition = []
      for i, w in enumerate(widths):
        if i >= len(previous):  # a new, lower branch from the lowest one
          transition.append(nn.Sequential(_conv_bn(previous[-1], w, 3, 2)))
        else:
          transition.append(_conv_bn(previous[i], w, 3) if previous[i] != w else None)
      setattr(self, f'transition{stage - 1}', nn.ModuleList(transition))
      setattr(self, f'stage{stage}', nn.Sequential(*[HighResolutionModule(widths, num_blocks, align_corners)
                                                     for _ in range(num_modules)]))
      previous = widths

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
    branches = [self.layer1(x)]
    for stage in range(2, 5):
      transition = getattr(self, f'transition{stage - 1}')
      branches = [(layer(branches[min(i, len(branches) - 1)]) if layer is not None else branches[i])
                  for i, layer in enumerate(transition)]
      for module in getattr(self, f'stage{stage}'):
        branches = module(branches)
    return branches


# ------------------------------------------------------------------------------------------------ OCRNet


def resize_concat(features: Sequence[torch.Tensor], align_corners: bool) -> torch.Tensor:
  """Every feature map bilinearly resized to the first one's size, concatenated on channels (HRNetV2's head input,
  mmseg's input_transform='resize_concat')."""
  size = features[0].shape[2:]
  return torch.cat([x if x.shape[2:] == size else F.interpolate(x, size, mode='bilinear', align_corners=align_corners)
                    for x in features], dim=1)


def gather_objects(feats: torch.Tensor, region_logits: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
  """OCR's spatial gather: (B, C, H, W) features, (B, K, H, W) region logits -> (B, C, K, 1) object representations,
  the features averaged with softmax over positions of scale * logits_k."""
  weights = F.softmax(scale * region_logits.flatten(2), dim=2)  # (B, K, HW)
  return torch.matmul(weights, feats.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(3)


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
  """OCR's object attention: (B, C', H, W) pixel queries, (B, C', K, 1) region keys and values -> (B, C', H, W)
  context, each pixel's softmax over the K regions of q.k / sqrt(C') weighting the values."""
  batch, channels, height, width = query.shape
  relation = torch.matmul(query.flatten(2).transpose(1, 2), key.flatten(2)) * channels**-0.5  # (B, HW, K)
  context = torch.matmul(F.softmax(relation, dim=-1), value.flatten(2).transpose(1, 2))  # (B, HW, C')
  return context.transpose(1, 2).reshape(batch, channels, height, width)


def _conv_bnrelu(cin: int, cout: int) -> list[nn.Module]:
  """HRNet-OCR's [1x1 conv (no bias), ModuleHelper.BNReLU = Sequential(BatchNorm2d, ReLU)]."""
  return [nn.Conv2d(cin, cout, 1, bias=False), nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU())]


class ObjectAttentionBlock(nn.Module):
  """HRNet-OCR's _ObjectAttentionBlock (scale 1): `f_pixel` and `f_object` two [1x1 conv, BNReLU] C -> C', `f_down`
  one, `f_up` one C' -> C; (B, C, H, W) pixels, (B, C, K, 1) objects -> (B, C, H, W) context."""

  def __init__(self, channels: int, key_channels: int):
    super().__init__()
    self.f_pixel = nn.Sequential(*_conv_bnrelu(channels, key_channels), *_conv_bnrelu(key_channels, key_channels))
    self.f_object = nn.Sequential(*_conv_bnrelu(channels, key_channels), *_conv_bnrelu(key_channels, key_channels))
    self.f_down = nn.Sequential(*_conv_bnrelu(channels, key_channels))
    self.f_up = nn.Sequential(*_conv_bnrelu(key_channels, channels))

  def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
    return self.f_up(attend(self.f_pixel(x), self.f_object(proxy), self.f_down(proxy)))


class SpatialGather(nn.Module):
  """HRNet-OCR's SpatialGather_Module (no parameters): `gather_objects` at scale 1."""

  def forward(self, feats: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    return gather_objects(feats, region_logits)


class SpatialOCR(nn.Module):
  """HRNet-OCR's SpatialOCR_Module: `object_context_block`, then `conv_bn_dropout` = [1x1 conv 2C -> C (no bias),
  BNReLU, Dropout2d] on [context, features]."""

  def __init__(self, channels: int, key_channels: int, dropout_rate: float):
    super().__init__()
    self.object_context_block = ObjectAttentionBlock(channels, key_channels)
    self.conv_bn_dropout = nn.Sequential(*_conv_bnrelu(2 * channels, channels), nn.Dropout2d(dropout_rate))

  def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
    return self.conv_bn_dropout(torch.cat([self.object_context_block(feats, proxy), feats], dim=1))


class HRNetOCR(HRNet):
  """HRNet-OCR's HighResolutionNet (seg_hrnet_ocr.py): the HRNetV2 modules, then on the concatenated branches
  (15 x width channels, resized with `align_corners`) `aux_head` = [1x1 conv with bias, BN, ReLU, 1x1 conv -> K]
  (the soft regions), `conv3x3_ocr` = [3x3 conv with bias -> C, BN, ReLU], `ocr_gather_head`, `ocr_distri_head`
  and `cls_head` (1x1 conv -> K). (B, 3, H, W) -> {'logits', 'aux_logits'}, both (B, K, H/4, W/4)."""

  def __init__(self, num_classes: int, width: int = 48, depth: str = 'full', align_corners: bool = True, *,
               channels: int = 512, key_channels: int = 256, dropout_rate: float = 0.05):
    super().__init__(width, depth, align_corners)
    self.align_corners = align_corners
    concat = 15 * width
    self.conv3x3_ocr = nn.Sequential(*conv_bn_relu(concat, channels, 3, bias=True))
    self.ocr_gather_head = SpatialGather()
    self.ocr_distri_head = SpatialOCR(channels, key_channels, dropout_rate)
    self.cls_head = nn.Conv2d(channels, num_classes, 1)
    self.aux_head = nn.Sequential(*conv_bn_relu(concat, concat, 1, bias=True), nn.Conv2d(concat, num_classes, 1))

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = resize_concat(super().forward(x), self.align_corners)
    aux = self.aux_head(feats)
    feats = self.conv3x3_ocr(feats)
    feats = self.ocr_distri_head(feats, self.ocr_gather_head(feats, aux))
    return {'logits': self.cls_head(feats), 'aux_logits': aux}


class FullModel(nn.Module):
  """HRNet-Semantic-Segmentation's FullModel, whose state dict its released checkpoints are: `model` (keys
  `model.*`) and `loss`, here a CrossEntropyLoss with class weights, a buffer (`loss.criterion.weight`) as the
  Cityscapes models hold."""

  def __init__(self, model: nn.Module, num_classes: int):
    super().__init__()
    self.model = model
    self.loss = nn.Module()
    self.loss.criterion = nn.CrossEntropyLoss(weight=torch.ones(num_classes))

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return self.model(x)


class MmsegObjectAttentionBlock(nn.Module):
  """mmseg's OCR ObjectAttentionBlock (a SelfAttentionBlock, scale 1): `query_project` and `key_project` two 1x1
  ConvModules C -> C', `value_project` one, `out_project` C' -> C, then `bottleneck` 1x1 ConvModule 2C -> C on
  [context, pixels]."""

  def __init__(self, channels: int, key_channels: int):
    super().__init__()
    self.key_project = nn.Sequential(ConvModule(channels, key_channels, 1), ConvModule(key_channels, key_channels, 1))
    self.query_project = nn.Sequential(ConvModule(channels, key_channels, 1),
                                       ConvModule(key_channels, key_channels, 1))
    self.value_project = ConvModule(channels, key_channels, 1)
    self.out_project = ConvModule(key_channels, channels, 1)
    self.bottleneck = ConvModule(2 * channels, channels, 1)

  def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
    context = attend(self.query_project(feats), self.key_project(proxy), self.value_project(proxy))
    return self.bottleneck(torch.cat([self.out_project(context), feats], dim=1))


class MmsegOCRHead(nn.Module):
  """mmseg's OCRHead: `bottleneck` 3x3 ConvModule -> C, the spatial gather over the previous head's logits,
  `object_context_block`, Dropout2d (when the rate is above 0), `conv_seg`."""

  def __init__(self, in_channels: int, num_classes: int, *, channels: int, key_channels: int,
               dropout_rate: float = 0.1):
    super().__init__()
    self.bottleneck = ConvModule(in_channels, channels, 3)
    self.object_context_block = MmsegObjectAttentionBlock(channels, key_channels)
    self.dropout = nn.Dropout2d(dropout_rate) if dropout_rate > 0 else nn.Identity()
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, x: torch.Tensor, prev_output: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = self.bottleneck(x)
    feats = self.object_context_block(feats, gather_objects(feats, prev_output))
    return {'logits': self.conv_seg(self.dropout(feats))}


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and BN statistics for output-parity tests: every conv and Linear weight N(0, 1 / fan_in),
  biases N(0, 0.1), BN weight U(0.5, 1.5), bias N(0, 0.1), running mean N(0, 0.1), running var U(0.5, 1.5);
  Encoding layers keep their own init."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        m.weight.normal_(0, (m.weight[0].numel())**-0.5, generator=generator)
        if m.bias is not None:
          m.bias.normal_(0, 0.1, generator=generator)
      elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.weight.uniform_(0.5, 1.5, generator=generator)
        m.bias.normal_(0, 0.1, generator=generator)
        m.running_mean.normal_(0, 0.1, generator=generator)
        m.running_var.uniform_(0.5, 1.5, generator=generator)
  return module


# ------------------------------------------------------------------------------------------------ model


class Segmentor(nn.Module):
  """Backbone and heads -> dict of named outputs at feature resolution, as ctxseg_jax's Segmentor: 'logits' always,
  training-only heads' outputs only in training mode. `names` gives the attribute of the backbone and of each head
  (ctxseg_jax name -> PyTorch name): PyTorch-Encoding's by default (`pretrained`, `head`, `auxlayer`)."""

  def __init__(self, backbone: nn.Module, heads: dict[str, tuple[nn.Module, dict[str, Any]]],
               names: dict[str, str] = TORCH_NAMES):
    super().__init__()
    self._backbone = names['backbone']
    setattr(self, self._backbone, backbone)
    self._wiring = {}
    for name, (module, wiring) in heads.items():
      setattr(self, names[name], module)
      self._wiring[names[name]] = wiring

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    features = getattr(self, self._backbone)(x)
    outputs = {}
    for attribute, wiring in self._wiring.items():
      if wiring['train_only'] and not self.training:
        continue
      result = getattr(self, attribute)(head_input(features, wiring))
      outputs.update({wiring['published'][local]: value for local, value in result.items()})
    return outputs


def head_input(features: Sequence[torch.Tensor], wiring: dict[str, Any]) -> torch.Tensor | list[torch.Tensor]:
  """The stages a head reads (`wiring['reads']`): one map, a list, or with input_transform 'resize_concat' their
  concatenation (`resize_concat`, the wiring's align_corners)."""
  selected = [features[i] for i in wiring['reads']]
  if wiring.get('input_transform') == 'resize_concat':
    return resize_concat(selected, wiring['align_corners'])
  return selected[0] if len(selected) == 1 else selected


class MmsegCascade(nn.Module):
  """mmseg's CascadeEncoderDecoder: `backbone` and `decode_head`, a ModuleList of heads each of which after the
  first also reads the previous head's logits (OCRNet: the soft-region FCNHead, then the OCRHead). (B, 3, H, W) ->
  {published name: logits (B, K, h, w)} of every head."""

  def __init__(self, backbone: nn.Module, heads: Sequence[tuple[nn.Module, dict[str, Any]]]):
    super().__init__()
    self.backbone = backbone
    self.decode_head = nn.ModuleList([module for module, _ in heads])
    self._wiring = [wiring for _, wiring in heads]

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    features = self.backbone(x)
    outputs, previous = {}, ()
    for head, wiring in zip(self.decode_head, self._wiring):
      logits = head(head_input(features, wiring), *previous)['logits']
      outputs[wiring['published']['logits']] = logits
      previous = (logits,)
    return outputs


HEAD_OUTPUTS = {'fcn': ('logits',), 'enc': ('logits', 'se_logits'), 'aspp': ('logits',), 'ocr': ('logits',)}
# Whose module names a model built here has: PyTorch-Encoding's (resnet50s, EncHead, FCNHead) or mmseg's
# (ResNetV1c or HRNet, mmseg EncHead, FCNHead and ASPPHead); 'mmseg_cascade' (mmseg's OCRNet: MmsegCascade) and
# 'hrnet_ocr' (HRNet-OCR: FullModel of HRNetOCR) have their own modules.
LAYOUT_NAMES = {'pte': TORCH_NAMES, 'mmseg': {'backbone': 'backbone', 'decode_head': 'decode_head',
                                              'aux_head': 'auxiliary_head'}}
LAYOUTS = (*LAYOUT_NAMES, 'mmseg_cascade', 'hrnet_ocr')


def _stage_channels(backbone: dict[str, Any]) -> list[int]:
  return [backbone['base_width'] * 2**stage * Bottleneck.expansion for stage in range(4)]


def _build_backbone(backbone: dict[str, Any], layout: str) -> tuple[nn.Module, list[int]]:
  """(The backbone of ctxseg_jax's `config.model.backbone.to_dict()`, its stage widths)."""
  if backbone['name'] == 'resnet':
    return ResNet(depth=backbone['depth'], stem=backbone['stem'], base_width=backbone['base_width'],
                  output_stride=backbone['output_stride'], contract_dilation=backbone['contract_dilation'],
                  zero_init_residual=backbone['zero_init_residual'],
                  layout='torch' if layout == 'pte' else 'mmseg'), _stage_channels(backbone)
  if backbone['name'] == 'hrnet' and layout != 'pte':
    return (HRNet(backbone['width'], backbone['depth'], backbone['align_corners']),
            [backbone['width'] * 2**i for i in range(4)])
  raise _unsupported(f"the {backbone['name']!r} backbone in the {layout!r} layout")


def _build_head(head: dict[str, Any], in_channels: list[int], num_classes: int, layout: str) -> nn.Module:
  mmseg = layout in ('mmseg', 'mmseg_cascade')
  if head['type'] == 'fcn':
    if mmseg:
      return MmsegFCNHead(in_channels[0], num_classes, channels=head['channels'], num_convs=head['num_convs'],
                          concat_input=head['concat_input'], kernel_size=head['kernel_size'],
                          dropout_rate=head['dropout'])
    if head['concat_input']:
      raise _unsupported("an 'fcn' head with concat_input (mmseg's form)")
    (cin,) = in_channels
    return FCNHead(cin, num_classes, channels=head['channels'], num_convs=head['num_convs'],
                   kernel_size=head['kernel_size'], conv_bias=head['conv_bias'], dropout_rate=head['dropout'],
                   dropout_mode=head['dropout_mode'], weight_init=head['weight_init'])
  if head['type'] == 'aspp' and mmseg:
    return MmsegASPPHead(in_channels[0], num_classes, channels=head['channels'], dilations=head['dilations'],
                         dropout_rate=head['dropout'])
  if head['type'] == 'enc':
    cls = MmsegEncHead if mmseg else EncHead
    return cls(in_channels, num_classes, channels=head['channels'], num_codes=head['num_codes'],
               lateral=head['lateral'], se_head=head['se_head'], dropout_rate=head['dropout'],
               dropout_mode=head['dropout_mode'])
  if head['type'] == 'ocr' and layout == 'mmseg_cascade':
    if head['bottleneck_bias'] or head['gather_scale'] != 1 or head['dropout_mode'] != 'channel':
      raise _unsupported("an 'ocr' head other than mmseg's (bias-free bottleneck, gather scale 1, Dropout2d)")
    return MmsegOCRHead(in_channels[0], num_classes, channels=head['channels'], key_channels=head['key_channels'],
                        dropout_rate=head['dropout'])
  raise _unsupported(f"a {head['type']!r} head in the {layout!r} layout")


def _build_heads(model: dict[str, Any], stages: list[int], num_classes: int,
                 layout: str) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
  """{ctxseg_jax head name: (module, wiring)} of the enabled heads, in running order (heads reading other heads'
  outputs after those, training-only ones last); the wiring is what `head_input` and the models read."""
  heads = {}
  order = lambda item: (item[1]['train_only'], bool(item[1]['reads_outputs']), item[0])  # noqa: E731
  for name, head in sorted(model['heads'].items(), key=order):
    if not head['enabled']:
      continue
    if name not in TORCH_NAMES or head['type'] not in HEAD_OUTPUTS:
      raise _unsupported(f"head {name!r} of type {head['type']!r}")
    reads_logits = head['reads_outputs'] == ('aux_logits',) and 'aux_logits' in model['heads']['aux_head']['outputs']
    if head['reads_outputs'] and not (layout == 'mmseg_cascade' and reads_logits):
      raise _unsupported(f"head {name!r} reading outputs {head['reads_outputs']!r} in the {layout!r} layout")
    in_channels = [stages[i] for i in head['reads']]
    if head['input_transform'] == 'resize_concat':
      in_channels = [sum(in_channels)]
    module = _build_head(head, in_channels, num_classes, layout)
    published = dict(zip(HEAD_OUTPUTS[head['type']], head['outputs']))
    heads[name] = (module, {'reads': tuple(head['reads']), 'input_transform': head['input_transform'],
                            'align_corners': head['align_corners'], 'train_only': head['train_only'],
                            'published': published})
  return heads


def _build_hrnet_ocr(model: dict[str, Any], num_classes: int) -> FullModel:
  """HRNet-OCR's FullModel of HRNetOCR, for a config of that form: an HRNet backbone, the soft-region 'fcn'
  `aux_head` (one biased 1x1 conv 15 x width wide, no dropout) and the 'ocr' `decode_head` (biased bottleneck,
  Dropout2d), both on the concatenated stages resized with the backbone's align_corners."""
  backbone, heads = model['backbone'], model['heads']
  if backbone['name'] != 'hrnet':
    raise _unsupported(f"the {backbone['name']!r} backbone in the 'hrnet_ocr' layout")
  width = backbone['width']
  stages = dict(reads=(0, 1, 2, 3), input_transform='resize_concat', align_corners=backbone['align_corners'])
  expected = {'aux_head': dict(type='fcn', kernel_size=1, num_convs=1, channels=15 * width, conv_bias=True,
                               concat_input=False, dropout=0.0, outputs=('aux_logits',), **stages),
              'decode_head': dict(type='ocr', reads_outputs=('aux_logits',), bottleneck_bias=True, gather_scale=1.0,
                                  dropout_mode='channel', **stages)}
  plain = lambda value: tuple(value) if isinstance(value, list) else value  # noqa: E731
  differs = [f'{name}.{key}' for name, settings in expected.items() for key, value in settings.items()
             if plain(heads.get(name, {}).get(key)) != value]
  differs += [f'{name} (enabled)' for name, head in heads.items() if head['enabled'] != (name in expected)]
  if differs:
    raise _unsupported(f"HRNet-OCR ('hrnet_ocr' layout) for a model that differs from it in {differs}")
  ocr = heads['decode_head']
  return FullModel(HRNetOCR(num_classes, width, backbone['depth'], backbone['align_corners'],
                            channels=ocr['channels'], key_channels=ocr['key_channels'], dropout_rate=ocr['dropout']),
                   num_classes)


def build_model(model: dict[str, Any], num_classes: int, layout: str = 'pte') -> nn.Module:
  """The PyTorch model of ctxseg_jax's `config.model.to_dict()` for `num_classes` classes (disabled heads left out),
  with the module names of `layout` (LAYOUTS): a Segmentor ('pte', 'mmseg'), an MmsegCascade ('mmseg_cascade') or
  a FullModel ('hrnet_ocr'). Called, each returns {published output name: (B, C, h, w)}."""
  if model['dtype'] != 'float32':
    raise _unsupported(f"model.dtype {model['dtype']!r}")
  if layout not in LAYOUTS:
    raise _unsupported(f'the {layout!r} layout')
  if layout == 'hrnet_ocr':
    return _build_hrnet_ocr(model, num_classes)
  backbone, stages = _build_backbone(model['backbone'], layout)
  heads = _build_heads(model, stages, num_classes, layout)
  if layout == 'mmseg_cascade':
    if list(heads) != ['aux_head', 'decode_head']:  # decode_head.0 and decode_head.1
      raise _unsupported(f"heads {list(heads)} in the 'mmseg_cascade' layout (aux_head, then decode_head)")
    return MmsegCascade(backbone, list(heads.values()))
  return Segmentor(backbone, heads, LAYOUT_NAMES[layout])


def count_params(module: nn.Module) -> int:
  """Trainable parameters (BN running statistics are buffers, not counted), as ctxseg_jax counts its 'params'."""
  return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ loss


def class_presence(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
  """float (B, K): 1 where class k occurs in image b (ignore_index and values outside 0..K-1 never count)."""
  flat = labels.reshape(labels.shape[0], -1)
  valid = (flat >= 0) & (flat < num_classes) & (flat != ignore_index)
  bins = torch.where(valid, flat, torch.full_like(flat, num_classes))
  counts = torch.zeros(flat.shape[0], num_classes + 1, dtype=torch.float32).scatter_add_(
      1, bins, torch.ones_like(bins, dtype=torch.float32))
  return (counts[:, :num_classes] > 0).float()


def make_loss(loss: dict[str, Any], *, num_classes: int,
              ignore_index: int) -> Callable[[dict[str, torch.Tensor], torch.Tensor], tuple[torch.Tensor, dict]]:
  """The loss of ctxseg_jax's `config.loss.to_dict()`: (outputs, int64 labels (B, H, W)) -> (total, {'loss_<name>':
  weighted value}). 'cross_entropy' resizes its output bilinearly (the term's align_corners) to the labels and
  averages over valid pixels ('valid') or all pixels ('all'); 'se' is BCE on logits against `class_presence`."""
  terms = []
  for name, term in sorted(loss['terms'].items()):
    if term['weight'] <= 0:
      continue
    if term['start_step']:
      raise _unsupported(f'loss term {name!r} with a start_step')
    if term['type'] == 'cross_entropy':
      if term['reduction'] not in ('valid', 'all') or term['class_weight']:
        raise _unsupported(f"cross-entropy term {name!r} (reduction {term['reduction']!r}, class weights)")
    elif term['type'] != 'se':
      raise _unsupported(f"the {term['type']!r} loss term")
    terms.append((name, term))

  def loss_fn(outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    logs = {}
    for name, term in terms:
      if term['type'] == 'cross_entropy':
        logits = F.interpolate(outputs[term['output']], labels.shape[1:], mode='bilinear',
                               align_corners=term['align_corners'])
        if term['reduction'] == 'valid':
          value = F.cross_entropy(logits, labels, ignore_index=ignore_index)
        else:
          value = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction='sum') / labels.numel()
      else:
        target = class_presence(labels, num_classes, ignore_index)
        value = F.binary_cross_entropy_with_logits(outputs[term['output']], target)
      logs[f'loss_{name}'] = term['weight'] * value
    return sum(logs.values()), logs

  return loss_fn


# ------------------------------------------------------------------------------------------------ optimiser


def poly_lr(optim: dict[str, Any], total_steps: int, step: int) -> float:
  """ctxseg_jax.optim.lr_schedule (optim.schedule 'poly') at `step` (the LR used by step `step`, 0-based)."""
  t = min(float(step), total_steps)
  lr = (optim['lr'] - optim['end_lr']) * (1.0 - t / total_steps)**optim['poly_power'] + optim['end_lr']
  if optim['warmup_steps'] > 0 and t < optim['warmup_steps']:
    ratio = optim['warmup_ratio']
    lr *= ratio + (1.0 - ratio) * t / optim['warmup_steps']
  return lr


def lr_multiplier(path: str, lr_mults: Sequence[Sequence[Any]]) -> float:
  """ctxseg_jax.optim.lr_multiplier: the multiplier of the first (regex, mult) that re.search-es `path`, else 1."""
  for pattern, mult in lr_mults:
    if re.search(pattern, path):
      return float(mult)
  return 1.0


def make_optimizer(model: Segmentor, optim: dict[str, Any]) -> torch.optim.SGD:
  """PyTorch SGD (momentum, weight decay on every parameter, no dampening or Nesterov), one parameter group per LR
  multiplier. A parameter's multiplier is that of its ctxseg_jax path: the top-level module's ctxseg_jax name then
  the rest of its PyTorch name ('decode_head/conv5/0/weight'), which is exact for patterns on the module name (as
  PyTorch-Encoding's heads-at-10x pattern)."""
  ours = {torch_name: name for name, torch_name in TORCH_NAMES.items()}
  groups: dict[float, list[nn.Parameter]] = {}
  for name, param in model.named_parameters():
    top, _, rest = name.partition('.')
    path = '/'.join([ours[top], *rest.split('.')])
    groups.setdefault(lr_multiplier(path, optim['lr_mults']), []).append(param)
  return torch.optim.SGD([{'params': params, 'lr': optim['lr'] * mult, 'mult': mult}
                          for mult, params in sorted(groups.items())],
                         lr=optim['lr'], momentum=optim['momentum'], weight_decay=optim['weight_decay'])


# ------------------------------------------------------------------------------------------------ steps


class Trainer:
  """A model with its loss, optimiser and LR schedule; `train_step` and `predict` take the batches ctxseg_jax's
  steps take (uint8 NHWC images, uint8 labels) and normalise inside, as ctxseg_jax's do.

  spec: {'model', 'loss', 'optim' (config.<key>.to_dict()), 'steps' (config.train.steps), 'mean', 'std' (RGB, 0..255),
  'num_classes', 'ignore_index'}.
  """

  def __init__(self, spec: dict[str, Any]):
    self.spec = spec
    self.model = build_model(spec['model'], spec['num_classes'])
    self.loss_fn = make_loss(spec['loss'], num_classes=spec['num_classes'], ignore_index=spec['ignore_index'])
    self.optimizer = make_optimizer(self.model, spec['optim'])
    self.mean = torch.tensor(spec['mean'], dtype=torch.float32).view(1, 3, 1, 1)
    self.std = torch.tensor(spec['std'], dtype=torch.float32).view(1, 3, 1, 1)
    self.step = 0

  def normalize(self, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W), (x - mean) / std."""
    return (images.permute(0, 3, 1, 2).float() - self.mean) / self.std

  def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One SGD step at the step's poly LR; returns the (detached) total loss and the weighted terms."""
    lr = poly_lr(self.spec['optim'], self.spec['steps'], self.step)
    for group in self.optimizer.param_groups:
      group['lr'] = lr * group['mult']
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    outputs = self.model(self.normalize(images))
    total, logs = self.loss_fn(outputs, labels.long())
    total.backward()
    self.optimizer.step()
    self.step += 1
    return total.detach(), {k: v.detach() for k, v in logs.items()}

  @torch.inference_mode()
  def predict(self, images: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits (B, K, H, W) at the input resolution (bilinear, align_corners False, as
    ctxseg_jax.inference.predict_logits)."""
    self.model.eval()
    logits = self.model(self.normalize(images))['logits']
    return F.interpolate(logits, images.shape[1:3], mode='bilinear', align_corners=False)
