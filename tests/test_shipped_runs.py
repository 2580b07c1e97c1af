"""Every shipped config trains and evaluates end to end on a small tree in its dataset's official layout.

The configs run as shipped (data pipeline, protocol, heads and their wiring, loss terms, optimiser) except for
what makes them fit a test: a narrow backbone (HRNetV2 at width 4 with the W18-Small-v2 depth; ResNet-18 at width
8), small crops and eval sizes, batch 2 (OHEM in one group of 2), 2 steps. The full-size models are checked by
`jax.eval_shape` in tests/test_param_counts.py.
"""
import jax
import numpy as np
import pytest

from ctxseg_jax import reporting, train
from tests import layouts
from tests.shipped_configs import CONFIGS, load

TREES = {'cityscapes': layouts.cityscapes, 'ade20k': layouts.ade20k, 'pascal_context_59': layouts.pascal_context,
         'coco_stuff10k': layouts.coco_stuff10k, 'camvid': layouts.camvid}
# Each config file as get_config() returns it, and the grid cells whose dataset no such config reads.
ON_DISK = [path for path in CONFIGS if load(path).data.name in TREES] + ['configs/contextrast.py:deeplabv3_r101,camvid']


def shrink(config, root):
  """`config` with a narrow backbone, 32-pixel-high crops and a few steps, reading the tree at `root`."""
  data = config.data
  data.root = str(root)
  aspect = data.crop_size[1] / data.crop_size[0]
  data.crop_size = (32, int(32 * aspect))
  data.base_size = 32 * max(1, int(aspect))
  data.base_short_side = 32 if data.base_short_side else 0
  data.eval_scale = (0, 0) if tuple(data.eval_scale) == (0, 0) else (64, 32)
  data.eval_size = (64, 64)
  data.eval_label_size = (0, 0)
  data.worker_count = 0
  backbone = config.model.backbone
  if backbone.name == 'hrnet':
    backbone.width, backbone.depth = 4, 'small'
  else:
    backbone.depth, backbone.base_width = 18, 8
  for head in config.model.heads.values():
    if head.type == 'fcn' and head.kernel_size == 1 and head.num_convs == 1 and not head.concat_input:
      head.channels = 60  # the concatenated stages of a width-4 HRNet: a 1x1 head keeps its input width
  config.train.batch_size = 2
  for term in config.loss.terms.values():
    if term.type == 'cross_entropy' and term.ohem_group_size:
      term.ohem_group_size = 2
  config.train.steps = 2
  config.train.log_every = 1
  config.train.eval_every = 0
  config.train.checkpoint_every = 2
  config.eval.batch_size = 2
  config.eval.short_side = data.base_size if config.eval.short_side else 0  # HRNet-OCR's testval resize
  old_crop = config.eval.crop_size
  config.eval.crop_size = tuple(data.crop_size)  # the protocol's windows, scaled like the training crop
  config.eval.stride = tuple(max(1, s * c // o) for s, c, o in zip(config.eval.stride, data.crop_size, old_crop))
  return config


@pytest.mark.parametrize('path', ON_DISK)
def test_a_shipped_config_trains_and_evaluates_on_its_official_layout(path, tmp_path):
  config = load(path)
  TREES[config.data.name](tmp_path / 'data')
  shrink(config, tmp_path / 'data')
  train.train(config, tmp_path / 'run', devices=jax.devices()[:1])
  records = reporting.read_metrics(tmp_path / 'run')
  losses = [r['loss'] for r in records if r['split'] == 'train']
  assert len(losses) == 2 and all(np.isfinite(losses)), losses
  evaluation = [r for r in records if r['split'] == 'eval']
  assert evaluation and 0 <= evaluation[-1]['miou'] <= 100
