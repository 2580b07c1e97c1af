"""Heads by type (config.model.heads.<name>.type), with the wiring settings every head declares.

A head type is one module file with SETTINGS, a build function and a `Component`; registering it is one line
below. Its config is `HEADS.config(type, **settings)`, placed under config.model.heads with `models.set_head`.
"""
from typing import Any

import ml_collections

from ctxseg_jax import settings
from ctxseg_jax.models.heads import aspp, classifier, encnet, fcn, linear, ocr, projection
from ctxseg_jax.models.segmentor import INPUT_TRANSFORMS
from ctxseg_jax.settings import Registry, Setting

WIRING = {
    'enabled': Setting(True, 'False leaves the head, and its parameters, out of the model '
                       '(e.g. --config.model.heads.aux_head.enabled=False with its loss term\'s weight at 0)'),
    'reads': Setting((3,), 'backbone stages read, by index (0 = finest; mmseg in_index)', rule=settings.INT_TUPLE),
    'input_transform': Setting('select', "'select': one array per index (a list for several); 'resize_concat': "
                               'resized to the first one and concatenated (HRNet)', choices=INPUT_TRANSFORMS),
    'align_corners': Setting(False, "corner convention of the 'resize_concat' resize"),
    'reads_outputs': Setting((), 'outputs of earlier heads passed after the features', rule=settings.STR_TUPLE),
    'train_only': Setting(False, 'runs and owns parameters only in training (auxiliary heads)'),
    'outputs': Setting(('logits',), "published name of each of the head's outputs, in order",
                       rule=settings.STR_TUPLE),
}

HEADS = Registry('head', 'type', {
    'fcn': fcn.COMPONENT,
    'enc': encnet.COMPONENT,
    'linear': linear.COMPONENT,
    'ocr': ocr.COMPONENT,
    'aspp': aspp.COMPONENT,
    'projection': projection.COMPONENT,
    'classifier': classifier.COMPONENT,
}, common=WIRING)


def aux_fcn_head(**overrides: Any) -> ml_collections.ConfigDict:
  """The training-only auxiliary FCNHead on stage 3 (mmseg and PyTorch-Encoding): one 3x3 conv 256 wide, no input
  concat, dropout 0.1, publishing 'aux_logits'."""
  defaults = dict(reads=(2,), train_only=True, outputs=('aux_logits',), channels=256, num_convs=1,
                  concat_input=False)
  return HEADS.config('fcn', **{**defaults, **overrides})
