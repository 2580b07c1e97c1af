"""A backbone plus an ordered set of named heads -> a dict of named outputs.

Each head is declared by a `HeadSpec`: which backbone stages it reads (by index, as mmseg's `in_index`; one
stage is passed as an array, several as a list, or resized to the first one's size and concatenated with
`input_transform='resize_concat'`, as HRNet's head input is), which outputs of earlier heads it also reads
(passed positionally after the features: OCR's object head reads the soft-region logits), whether it runs only in
training, and the names under which its outputs are published.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax.models.heads.fcn import CLASSIFIER_INPUT
from ctxseg_jax.models.layers.conv import running_var
from ctxseg_jax.models.layers.valid_region import ValidRegion, resize_within, zero_padding

INPUT_TRANSFORMS = ('select', 'resize_concat')
STAGE_FEATURES = 'stage_features'


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """One head of a Segmentor and its wiring.

  Attributes:
    name: the head's module name (its parameters live under params[name]).
    module: the unbound head module; called as module(features, *read_outputs, train=...) and returning one
      array or a dict keyed by `local_outputs`.
    reads: backbone stage indices (0 = finest).
    input_transform: 'select' (one array for one index, a list for several) or 'resize_concat' (every stage
      resized bilinearly to the first one's size, then concatenated on channels).
    align_corners: corner convention of the 'resize_concat' resize.
    reads_outputs: names of earlier heads' outputs passed after the features.
    train_only: runs, and owns parameters, only when train=True.
    local_outputs: the names the module returns (its registry entry's outputs).
    outputs: the published name of each local output, position by position.
  """
  name: str
  module: nn.Module
  reads: tuple[int, ...] = (3,)
  input_transform: str = 'select'
  align_corners: bool = False
  reads_outputs: tuple[str, ...] = ()
  train_only: bool = False
  local_outputs: tuple[str, ...] = ('logits',)
  outputs: tuple[str, ...] = ('logits',)


def head_input(features: Sequence[jax.Array], spec: HeadSpec,
               valid: ValidRegion | None = None) -> jax.Array | list[jax.Array] | None:
  """The backbone features `spec` reads, shaped as its input_transform says (None when it reads no stage); with
  `valid`, resized within each image's region (layers.valid_region)."""
  selected = [features[i] for i in spec.reads]
  if not selected:
    return None
  if spec.input_transform == 'resize_concat':
    size = selected[0].shape[1:3]
    return jnp.concatenate([resize_within(x, size, valid, spec.align_corners) for x in selected], axis=-1)
  return selected[0] if len(selected) == 1 else selected


class Segmentor(nn.Module):
  """Backbone + declared heads, with named outputs.

  Outputs, at the resolution of the features they come from (callers resize to the label or image size):
    'logits': (B, h, w, K) float32, always.
    every other output a head publishes, float32; training-only heads' outputs only when `train`.
    'stage_features': when `train`, the tuple of backbone stage outputs (B, h_i, w_i, C_i) in the compute dtype,
      for training-only consumers (projection heads, feature metrics); unused ones cost nothing under jit.
  A training-only head runs, and so owns parameters, only when `train` is True: `init(..., train=False)` creates
  exactly the inference model.

  Attributes:
    backbone: module mapping (B, H, W, 3) images to a list of stage outputs; called as backbone(x, train=...).
    heads: the heads in the order they run.
    bn_running_var: how every BatchNorm of the model updates its running variance in training: 'unbiased'
      (PyTorch) or 'biased' (Flax); see layers.conv.running_var.
  """
  backbone: nn.Module
  heads: tuple[HeadSpec, ...]
  bn_running_var: str = 'biased'

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, valid_size: jax.Array | None = None) -> dict[str, jax.Array]:
    """(B, H, W, 3) normalised float images -> dict of named outputs (see the class docstring).

    valid_size: optional int (B, 2), each image's (h, w) at the top-left of `images`, the rest padding. Every
    convolution and max pool then sees zeros in the padding, and the backbone and heads that pool or resize
    (`takes_valid_region`: EncNet's Encoding layer and lateral connections, ASPP's image pooling, OCR's region
    gather, HRNet's fusion) do so within each image's region, as on the image alone (layers.valid_region).
    """
    valid = None if valid_size is None else ValidRegion(valid_size, images.shape[1:3])
    regions = nn.intercept_methods(zero_padding(valid)) if valid is not None else contextlib.nullcontext()
    with running_var(self.bn_running_var), regions:
      return self._forward(images, train, valid)

  def _forward(self, images: jax.Array, train: bool, valid: ValidRegion | None) -> dict[str, jax.Array]:
    features = self.backbone(images, train=train, **_region_argument(self.backbone, valid))
    outputs = {}
    for spec in self.heads:
      if spec.train_only and not train:
        continue
      inputs = [outputs[name] for name in spec.reads_outputs]
      x = head_input(features, spec, valid)
      if x is not None:
        inputs.insert(0, x)
      head = spec.module.clone(parent=self, name=spec.name)
      result = head(*inputs, train=train, **_region_argument(head, valid))
      if not isinstance(result, dict):
        result = {spec.local_outputs[0]: result}
      published = dict(zip(spec.local_outputs, spec.outputs))
      outputs.update({published[local]: value for local, value in result.items()})
    if 'logits' not in outputs:
      raise ValueError(f'no head published "logits"; outputs are {sorted(outputs)}')
    outputs = {name: value.astype(jnp.float32) for name, value in outputs.items()}
    if train:
      outputs[STAGE_FEATURES] = tuple(features)
    return outputs


def _region_argument(module: nn.Module, valid: ValidRegion | None) -> dict:
  """{'valid': valid} for a module that takes a ValidRegion (layers.valid_region), else {}."""
  return {'valid': valid} if valid is not None and getattr(module, 'takes_valid_region', False) else {}


def classifier_input(model: Segmentor, intermediates: dict) -> jax.Array:
  """The features the 'logits' head feeds its classifier, (B, h, w, C) in the compute dtype, from the
  'intermediates' of `model.apply(..., train=False, mutable=['intermediates'])`."""
  head = next(spec.name for spec in model.heads if 'logits' in spec.outputs and not spec.train_only)
  recorded = intermediates.get(head, {}).get('conv_seg', {}).get(CLASSIFIER_INPUT)
  if recorded is None:
    raise ValueError(f'head {head!r} publishes "logits" without a conv_seg classifier (models.heads.fcn.conv_seg), '
                     'so its features before the classifier are not recorded')
  return recorded[0]
