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

Used by bench/train_step.py (timing); built from `config.model.to_dict()`, `config.loss.to_dict()` and
`config.optim.to_dict()` so that it needs neither JAX nor ctxseg_jax. Only what the PyTorch-Encoding protocol uses
is covered (ResNet-50/101/152 backbones, 'fcn' heads without input concat, 'enc' heads, 'cross_entropy' and 'se'
loss terms); anything else raises NotImplementedError.
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
  bn1, ReLU), 'v1c' (the same layout with widths w/2, w/2, w: mmseg ResNetV1c) or 'pytorch' (one 7x7 stride-2 conv
  and bn1); then a 3x3 stride-2 max-pool. Initialised as ctxseg_jax's: Kaiming fan-out convs, BN scale 1 and bias
  0, the last BN of each block at scale 0 with `zero_init_residual`.
  """

  def __init__(self, depth: int = 50, stem: str = 's', base_width: int = 64, output_stride: int = 8,
               contract_dilation: bool = True, zero_init_residual: bool = True):
    super().__init__()
    if depth not in BLOCK_COUNTS:
      raise _unsupported(f'ResNet-{depth} (Bottleneck depths only: {sorted(BLOCK_COUNTS)})')
    w = base_width
    if stem == 'pytorch':
      self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
      inplanes = w
    elif stem in ('s', 'v1c'):
      widths = (w, w, 2 * w) if stem == 's' else (w // 2, w // 2, w)
      self.conv1 = nn.Sequential(
          nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True),
          nn.Conv2d(widths[0], widths[1], 3, padding=1, bias=False), nn.BatchNorm2d(widths[1]), nn.ReLU(True),
          nn.Conv2d(widths[1], widths[2], 3, padding=1, bias=False))
      inplanes = widths[2]
    else:
      raise _unsupported(f'ResNet stem {stem!r}')
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
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
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


# ------------------------------------------------------------------------------------------------ model


class Segmentor(nn.Module):
  """Backbone (`pretrained`) and heads (`head`, `auxlayer`) -> dict of named outputs at feature resolution, as
  ctxseg_jax's Segmentor: 'logits' always, training-only heads' outputs only in training mode."""

  def __init__(self, backbone: nn.Module, heads: dict[str, tuple[nn.Module, dict[str, Any]]]):
    super().__init__()
    self.pretrained = backbone
    self._wiring = {}
    for name, (module, wiring) in heads.items():
      setattr(self, TORCH_NAMES[name], module)
      self._wiring[TORCH_NAMES[name]] = wiring

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    features = self.pretrained(x)
    outputs = {}
    for attribute, wiring in self._wiring.items():
      if wiring['train_only'] and not self.training:
        continue
      selected = [features[i] for i in wiring['reads']]
      result = getattr(self, attribute)(selected[0] if len(selected) == 1 else selected)
      outputs.update({wiring['published'][local]: value for local, value in result.items()})
    return outputs


HEAD_OUTPUTS = {'fcn': ('logits',), 'enc': ('logits', 'se_logits')}


def _stage_channels(backbone: dict[str, Any]) -> list[int]:
  return [backbone['base_width'] * 2**stage * Bottleneck.expansion for stage in range(4)]


def _build_head(head: dict[str, Any], in_channels: list[int], num_classes: int) -> nn.Module:
  if head['type'] == 'fcn':
    if head['concat_input']:
      raise _unsupported("an 'fcn' head with concat_input (mmseg's form)")
    (cin,) = in_channels
    return FCNHead(cin, num_classes, channels=head['channels'], num_convs=head['num_convs'],
                   kernel_size=head['kernel_size'], conv_bias=head['conv_bias'], dropout_rate=head['dropout'],
                   dropout_mode=head['dropout_mode'], weight_init=head['weight_init'])
  if head['type'] == 'enc':
    return EncHead(in_channels, num_classes, channels=head['channels'], num_codes=head['num_codes'],
                   lateral=head['lateral'], se_head=head['se_head'], dropout_rate=head['dropout'],
                   dropout_mode=head['dropout_mode'])
  raise _unsupported(f"a {head['type']!r} head")


def build_model(model: dict[str, Any], num_classes: int) -> Segmentor:
  """The Segmentor of ctxseg_jax's `config.model.to_dict()` for `num_classes` classes (disabled heads left out)."""
  if model['dtype'] != 'float32':
    raise _unsupported(f"model.dtype {model['dtype']!r}")
  backbone = model['backbone']
  if backbone['name'] != 'resnet':
    raise _unsupported(f"the {backbone['name']!r} backbone")
  stages = _stage_channels(backbone)
  heads = {}
  for name, head in sorted(model['heads'].items(), key=lambda item: (item[1]['train_only'], item[0])):
    if not head['enabled']:
      continue
    if name not in TORCH_NAMES or head['type'] not in HEAD_OUTPUTS:
      raise _unsupported(f"head {name!r} of type {head['type']!r}")
    if head['input_transform'] != 'select' or head['reads_outputs']:
      raise _unsupported(f'head {name!r} wiring (input_transform {head["input_transform"]!r}, reads_outputs '
                         f'{head["reads_outputs"]!r})')
    module = _build_head(head, [stages[i] for i in head['reads']], num_classes)
    published = dict(zip(HEAD_OUTPUTS[head['type']], head['outputs']))
    heads[name] = (module, {'reads': tuple(head['reads']), 'train_only': head['train_only'], 'published': published})
  resnet = ResNet(depth=backbone['depth'], stem=backbone['stem'], base_width=backbone['base_width'],
                  output_stride=backbone['output_stride'], contract_dilation=backbone['contract_dilation'],
                  zero_init_residual=backbone['zero_init_residual'])
  return Segmentor(resnet, heads)


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
  """ctxseg_jax.optim.poly_schedule at `step` (the LR used by step `step`, 0-based)."""
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
