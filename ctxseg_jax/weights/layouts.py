"""Key maps from published PyTorch checkpoint layouts to this project's parameter tree.

A parameter of ours is named by its flattened path, e.g. 'params/backbone/layer3_0/conv2/kernel' or
'batch_stats/decode_head/bottleneck/bn/var': a collection, a top-level module (the backbone or a head, by its
config name), the module path inside it, and a leaf. A `Layout` turns the module path into the source module name
with per-component rules (regexes over our module path, first full match wins), adds the component's prefix in the
file, and names the leaf as PyTorch does:

  conv kernel  HWIO             <- weight OIHW (transposed)
  dense kernel (in, out)        <- Linear weight (out, in) (transposed)
  bias                          <- bias
  BN scale / bias / mean / var  <- weight / bias / running_mean / running_var (num_batches_tracked is dropped)
  Encoding codewords / scale    <- codewords / scale

Layouts (LAYOUTS):
  resnet        ImageNet ResNets named as torchvision, PyTorch-Encoding (resnet50s/101s) and timm (resnet50c/d/s):
                7x7 stem conv1/bn1, or the deep stem conv1.{0,1,3,4,6} + bn1; layerN.i.{convK,bnK,downsample.{0,1}}.
  mmseg_resnet  mmcv/mmseg ImageNet ResNetV1c (open-mmlab://resnet50_v1c): deep stem stem.{0,1,3,4,6,7}.
  hrnet         ImageNet HRNetV2 (official, mmseg, timm): conv1/bn1/conv2/bn2, layer1, transitionK,
                stageK.m.branches / fuse_layers; the classification modules are dropped.
  mmseg         whole mmseg models (backbone., decode_head., auxiliary_head.): EncNet, FCN, DeepLabV3 (ASPP) on
                ResNetV1c or HRNet.
  mmseg_cascade whole mmseg CascadeEncoderDecoder models (backbone., decode_head.0., decode_head.1.): OCRNet, the
                soft-region FCN head then the OCR head, on HRNet or ResNetV1c.
  pte           whole PyTorch-Encoding models (pretrained., head., auxlayer.): EncNet, FCN.
  hrnet_ocr     whole HRNet-OCR models (HRNet-Semantic-Segmentation, branch HRNet-OCR): the FullModel's `model.`
                (HRNet, conv3x3_ocr, ocr_distri_head, cls_head, aux_head); its `loss.` buffers are dropped.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable

import numpy as np

# A rule: (regex fully matching our module path inside a component, replacement: an re template or a function).
Rule = tuple[str, str | Callable[[re.Match], str]]

ALWAYS_DROPPED = (r'.*num_batches_tracked',)


RESNET_BLOCKS: tuple[Rule, ...] = (
    (r'layer(\d)_(\d+)/downsample_conv', r'layer\1.\2.downsample.0'),
    (r'layer(\d)_(\d+)/downsample_bn', r'layer\1.\2.downsample.1'),
    (r'layer(\d)_(\d+)/(conv\d|bn\d)', r'layer\1.\2.\3'),
)
STEM_7X7: tuple[Rule, ...] = ((r'stem/conv1/conv', 'conv1'), (r'stem/conv1/bn', 'bn1'))
# torchvision-style deep stem (PyTorch-Encoding, timm): conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv); bn1.
STEM_DEEP_TORCH: tuple[Rule, ...] = (
    (r'stem/conv1/conv', 'conv1.0'), (r'stem/conv1/bn', 'conv1.1'), (r'stem/conv2/conv', 'conv1.3'),
    (r'stem/conv2/bn', 'conv1.4'), (r'stem/conv3/conv', 'conv1.6'), (r'stem/conv3/bn', 'bn1'))
# mmcv ResNetV1c: stem = Sequential(conv, bn, relu) x 3.
STEM_DEEP_MMSEG: tuple[Rule, ...] = tuple((rf'stem/conv{i + 1}/{part}', f'stem.{3 * i + offset}')
                                          for i in range(3) for part, offset in (('conv', 0), ('bn', 1)))


def _transition(match: re.Match) -> str:
  """transitionK_i: a kept branch changing width is Sequential(conv, bn, relu); a new branch (i == K, the lowest)
  is Sequential(Sequential(conv, bn, relu)), so its layers sit one level deeper."""
  stage, branch, part = int(match[1]), int(match[2]), match[3]
  index = {'conv': 0, 'bn': 1}[part]
  return f'transition{stage}.{branch}.0.{index}' if branch == stage else f'transition{stage}.{branch}.{index}'


HRNET: tuple[Rule, ...] = (
    (r'stem1/conv', 'conv1'), (r'stem1/bn', 'bn1'), (r'stem2/conv', 'conv2'), (r'stem2/bn', 'bn2'),
    *RESNET_BLOCKS,
    (r'transition(\d)_(\d+)/(conv|bn)', _transition),
    (r'stage(\d)_(\d+)/branch(\d+)_(\d+)/(conv\d|bn\d)', r'stage\1.\2.branches.\3.\4.\5'),
    (r'stage(\d)_(\d+)/fuse(\d+)_(\d+)/conv', r'stage\1.\2.fuse_layers.\3.\4.0'),
    (r'stage(\d)_(\d+)/fuse(\d+)_(\d+)/bn', r'stage\1.\2.fuse_layers.\3.\4.1'),
    (r'stage(\d)_(\d+)/fuse(\d+)_(\d+)_(\d+)/conv', r'stage\1.\2.fuse_layers.\3.\4.\5.0'),
    (r'stage(\d)_(\d+)/fuse(\d+)_(\d+)_(\d+)/bn', r'stage\1.\2.fuse_layers.\3.\4.\5.1'),
)
HRNET_CLASSIFIER = (r'(incre_modules|downsamp_modules|final_layer|classifier|head)\..*',)

# mmcv ConvModules keep our names (`x/conv`, `x/bn` -> `x.conv`, `x.bn`); module lists are indexed.
MMSEG_HEADS: dict[str, tuple[Rule, ...]] = {
    'fcn': ((r'convs_(\d+)/(conv|bn)', r'convs.\1.\2'), (r'conv_cat/(conv|bn)', r'conv_cat.\1'),
            (r'conv_seg', 'conv_seg')),
    'enc': ((r'bottleneck/(conv|bn)', r'bottleneck.\1'), (r'lateral_convs_(\d+)/(conv|bn)', r'lateral_convs.\1.\2'),
            (r'fusion/(conv|bn)', r'fusion.\1'),
            (r'enc_module/encoding_project/(conv|bn)', r'enc_module.encoding_project.\1'),
            # EncModule.encoding = Sequential(Encoding, BatchNorm1d, ReLU); fc = Sequential(Linear, Sigmoid).
            (r'enc_module/encoding', 'enc_module.encoding.0'), (r'enc_module/encoding_norm', 'enc_module.encoding.1'),
            (r'enc_module/fc', 'enc_module.fc.0'), (r'conv_seg', 'conv_seg'), (r'se_layer', 'se_layer')),
    # ASPPHead.image_pool = Sequential(AdaptiveAvgPool2d, ConvModule); aspp_modules a list of ConvModules.
    'aspp': ((r'image_pool/(conv|bn)', r'image_pool.1.\1'), (r'aspp_(\d+)/(conv|bn)', r'aspp_modules.\1.\2'),
             (r'bottleneck/(conv|bn)', r'bottleneck.\1'), (r'conv_seg', 'conv_seg')),
}
# mmseg OCRHead: `bottleneck` 3x3 ConvModule; object_context_block (a SelfAttentionBlock) with query_project and
# key_project Sequentials of two 1x1 ConvModules, value_project and out_project single ConvModules, and its own 1x1
# `bottleneck` on [context, features].
MMSEG_OCR_HEAD: tuple[Rule, ...] = (
    (r'bottleneck/(conv|bn)', r'bottleneck.\1'),
    (r'object_context/f_pixel_(\d)/(conv|bn)', r'object_context_block.query_project.\1.\2'),
    (r'object_context/f_object_(\d)/(conv|bn)', r'object_context_block.key_project.\1.\2'),
    (r'object_context/f_down/(conv|bn)', r'object_context_block.value_project.\1'),
    (r'object_context/f_up/(conv|bn)', r'object_context_block.out_project.\1'),
    (r'fuse/(conv|bn)', r'object_context_block.bottleneck.\1'), (r'conv_seg', 'conv_seg'))


def _hrnet_ocr_transform(match: re.Match) -> str:
  """HRNet-OCR's _ObjectAttentionBlock: f_pixel / f_object = Sequential(conv, BNReLU, conv, BNReLU), f_down / f_up =
  Sequential(conv, BNReLU), BNReLU = Sequential(BatchNorm2d, ReLU): our `<f>_i` (f_down, f_up: i = 0) is conv 2i and
  the BN at 2i + 1, one level deeper ('.0')."""
  name, index, part = match[1], int(match[2] or 0), match[3]
  return f'ocr_distri_head.object_context_block.{name}.' + (f'{2 * index}' if part == 'conv' else f'{2 * index + 1}.0')


# HRNet-OCR (seg_hrnet_ocr.py) keeps its heads at the top level of the network: aux_head = [conv, BN, ReLU, conv];
# conv3x3_ocr = [conv, BN, ReLU]; ocr_distri_head (SpatialOCR_Module): object_context_block and conv_bn_dropout =
# [conv, BNReLU, Dropout2d]; cls_head a conv.
HRNET_OCR_HEADS: dict[str, tuple[Rule, ...]] = {
    'fcn': ((r'convs_0/conv', 'aux_head.0'), (r'convs_0/bn', 'aux_head.1'), (r'conv_seg', 'aux_head.3')),
    'ocr': ((r'bottleneck/conv', 'conv3x3_ocr.0'), (r'bottleneck/bn', 'conv3x3_ocr.1'),
            (r'object_context/(f_pixel|f_object|f_down|f_up)(?:_(\d))?/(conv|bn)', _hrnet_ocr_transform),
            (r'fuse/conv', 'ocr_distri_head.conv_bn_dropout.0'), (r'fuse/bn', 'ocr_distri_head.conv_bn_dropout.1.0'),
            (r'conv_seg', 'cls_head')),
}
# PyTorch-Encoding's heads are nn.Sequentials: FCNHead.conv5 = [conv, bn, relu, dropout, conv];
# EncHead.conv5/connect[i]/fusion = [conv, bn, relu]; EncModule.encoding = [conv, bn, relu, Encoding, BN1d, relu,
# mean]; conv6 = [dropout, conv].
PTE_HEADS: dict[str, tuple[Rule, ...]] = {
    'fcn': ((r'convs_0/conv', 'conv5.0'), (r'convs_0/bn', 'conv5.1'), (r'conv_seg', 'conv5.4')),
    'enc': ((r'bottleneck/conv', 'conv5.0'), (r'bottleneck/bn', 'conv5.1'),
            (r'lateral_convs_(\d+)/conv', r'connect.\1.0'), (r'lateral_convs_(\d+)/bn', r'connect.\1.1'),
            (r'fusion/conv', 'fusion.0'), (r'fusion/bn', 'fusion.1'),
            (r'enc_module/encoding_project/conv', 'encmodule.encoding.0'),
            (r'enc_module/encoding_project/bn', 'encmodule.encoding.1'),
            (r'enc_module/encoding', 'encmodule.encoding.3'), (r'enc_module/encoding_norm', 'encmodule.encoding.4'),
            (r'enc_module/fc', 'encmodule.fc.0'), (r'se_layer', 'encmodule.selayer'), (r'conv_seg', 'conv6.1')),
}


@dataclasses.dataclass(frozen=True)
class Layout:
  """A published checkpoint layout.

  Attributes:
    name: key of LAYOUTS.
    doc: what files are in it.
    backbones: backbone name -> {stem kind or '*': rules} for the module paths inside the backbone.
    heads: head type -> rules; empty for backbone-only (ImageNet) layouts, which fill the backbone alone.
    prefixes: our component name (backbone, or a head's config name) -> the prefix of its keys in the file.
    dropped: regexes of file keys the map leaves out on purpose (classifiers of ImageNet models).
  """
  name: str
  doc: str
  backbones: dict[str, dict[str, tuple[Rule, ...]]]
  heads: dict[str, tuple[Rule, ...]] = dataclasses.field(default_factory=dict)
  prefixes: dict[str, str] = dataclasses.field(default_factory=lambda: {'backbone': ''})
  dropped: tuple[str, ...] = ()

  @property
  def scope(self) -> str:
    """'model' when the layout holds whole segmentation models, 'backbone' for ImageNet backbones."""
    return 'model' if self.heads else 'backbone'


_TORCH_RESNET = {'pytorch': RESNET_BLOCKS + STEM_7X7, '*': RESNET_BLOCKS + STEM_DEEP_TORCH}
_MMSEG_RESNET = {'pytorch': RESNET_BLOCKS + STEM_7X7, '*': RESNET_BLOCKS + STEM_DEEP_MMSEG}

LAYOUTS = {layout.name: layout for layout in (
    Layout('resnet', 'ImageNet ResNet: torchvision (7x7 stem), PyTorch-Encoding resnet50s/101s and timm '
           'resnet50c/d/s (deep stem conv1.{0,1,3,4,6} + bn1)', {'resnet': _TORCH_RESNET}, dropped=(r'fc\..*',)),
    Layout('mmseg_resnet', 'ImageNet ResNet from mmcv/mmseg: ResNetV1c (open-mmlab://resnet50_v1c, deep stem '
           'stem.{0,1,3,4,6,7}) or ResNetV1b (7x7)', {'resnet': _MMSEG_RESNET}, dropped=(r'fc\..*',)),
    Layout('hrnet', 'ImageNet HRNetV2 (official HRNet-Image-Classification, mmseg, timm)', {'hrnet': {'*': HRNET}},
           dropped=HRNET_CLASSIFIER),
    Layout('mmseg', 'whole mmseg model (state_dict + meta): EncNet, FCN or DeepLabV3 on ResNetV1c or HRNet',
           {'resnet': _MMSEG_RESNET, 'hrnet': {'*': HRNET}}, MMSEG_HEADS,
           {'backbone': 'backbone.', 'decode_head': 'decode_head.', 'aux_head': 'auxiliary_head.'}),
    Layout('mmseg_cascade', 'whole mmseg CascadeEncoderDecoder model (state_dict + meta): OCRNet (FCNHead then '
           'OCRHead) on HRNet or ResNetV1c', {'resnet': _MMSEG_RESNET, 'hrnet': {'*': HRNET}},
           {**MMSEG_HEADS, 'ocr': MMSEG_OCR_HEAD},
           {'backbone': 'backbone.', 'aux_head': 'decode_head.0.', 'decode_head': 'decode_head.1.'}),
    Layout('hrnet_ocr', 'whole HRNet-OCR model (HRNet-Semantic-Segmentation, branch HRNet-OCR: FullModel with '
           '`model.` and `loss.`): HRNetV2 with the OCR and auxiliary heads', {'hrnet': {'*': HRNET}},
           HRNET_OCR_HEADS, {'backbone': 'model.', 'decode_head': 'model.', 'aux_head': 'model.'},
           dropped=(r'loss\..*',)),
    Layout('pte', 'whole PyTorch-Encoding model: EncNet or FCN on resnet50s/101s',
           {'resnet': _TORCH_RESNET}, PTE_HEADS,
           {'backbone': 'pretrained.', 'decode_head': 'head.', 'aux_head': 'auxlayer.'},
           dropped=(r'pretrained\.fc\..*',)),
)}

_LEAVES = {'kernel': 'weight', 'bias': 'bias', 'scale': 'weight', 'mean': 'running_mean', 'var': 'running_var'}


class LayoutError(ValueError):
  """A layout that does not exist, cannot be detected, or has no map for part of the model."""


def detect(keys: Iterable[str]) -> str:
  """The LAYOUTS name of a state dict, from its keys; LayoutError when none fits."""
  keys = set(keys)
  has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
  if has('pretrained.') and has('head.'):
    return 'pte'
  if has('model.ocr_distri_head.'):
    return 'hrnet_ocr'
  if has('backbone.') and has('decode_head.0.') and has('decode_head.1.'):
    return 'mmseg_cascade'
  if has('backbone.') and has('decode_head.'):
    return 'mmseg'
  if has('stage2.0.fuse_layers.'):
    return 'hrnet'
  if 'stem.0.weight' in keys and has('layer1.0.'):
    return 'mmseg_resnet'
  if 'layer1.0.conv1.weight' in keys:
    return 'resnet'
  sample = sorted(keys)[:5]
  raise LayoutError(f'cannot tell the layout of a state dict with keys like {sample}; name it with --layout (one of '
                    f'{sorted(LAYOUTS)})')


def get(name: str) -> Layout:
  if name not in LAYOUTS:
    raise LayoutError(f'unknown weights layout {name!r}; choose one of {sorted(LAYOUTS)}')
  return LAYOUTS[name]


def component_rules(layout: Layout, model_config, component: str) -> tuple[Rule, ...]:
  """The rules of `component` ('backbone' or a head's config name) of config.model `model_config`."""
  if component == 'backbone':
    backbone = model_config.backbone
    if backbone.name not in layout.backbones:
      raise LayoutError(f'layout {layout.name!r} holds {sorted(layout.backbones)} backbones, not the configured '
                        f'{backbone.name!r}')
    rules = layout.backbones[backbone.name]
    return rules.get(backbone.get('stem', '*'), rules['*'])
  head_type = model_config.heads[component].type
  if head_type not in layout.heads:
    raise LayoutError(f'layout {layout.name!r} has no map for head {component!r} of type {head_type!r} (it maps '
                      f'{sorted(layout.heads)}); leave the head out of the import with --skip {component}')
  return layout.heads[head_type]


def source_key(layout: Layout, model_config, path: str) -> str | None:
  """The file key of our flattened `path` ('params/backbone/stem/conv1/conv/kernel'), or None when the layout has
  no rule for it (a component it does not hold, or a module no rule names)."""
  collection, component, *module, leaf = path.split('/')
  if component not in layout.prefixes:
    return None
  module_path = '/'.join(module)
  for pattern, replacement in component_rules(layout, model_config, component):
    match = re.fullmatch(pattern, module_path)
    if match:
      name = replacement(match) if callable(replacement) else match.expand(replacement)
      is_encoding = leaf == 'codewords' or (leaf == 'scale' and module and module[-1] == 'encoding')
      source_leaf = leaf if is_encoding else _LEAVES.get(leaf)
      if source_leaf is None or (collection == 'batch_stats') != (leaf in ('mean', 'var')):
        return None
      return f'{layout.prefixes[component]}{name}.{source_leaf}'
  return None


def to_ours(array: np.ndarray, path: str) -> np.ndarray:
  """A file tensor in our layout: conv weights OIHW -> HWIO, Linear weights (out, in) -> (in, out)."""
  if path.endswith('/kernel') and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if path.endswith('/kernel') and array.ndim == 2:
    return array.T
  return array


def file_shape(shape: tuple[int, ...], path: str) -> tuple[int, ...]:
  """The shape a file tensor needs to become our `shape` at `path` (the inverse of to_ours)."""
  if path.endswith('/kernel') and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if path.endswith('/kernel') and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)
