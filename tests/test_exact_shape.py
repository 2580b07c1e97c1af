"""Exact-shape scoring: pooling over each image's own region of a padded batch, and bucketed eval shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import experiment, metrics, models, parallel
from ctxseg_jax.data import eval_plan, pipeline
from ctxseg_jax.models import build_model
from ctxseg_jax.models.heads import HEADS, aspp, encnet, ocr
from ctxseg_jax.models.layers.valid_region import ValidRegion, masked_mean, valid_positions
from tests.tiny_config import get_config, tiny_model_config, use_encnet, use_ocrnet

SIZES = ((5, 7), (8, 8), (3, 6))  # (h, w) of each image's feature map inside an 8x8 canvas


def _padded(rng, sizes, canvas, channels):
  """Random (B, *canvas, C) features, zero outside each image's top-left region, and each image alone."""
  alone = [rng.normal(size=(h, w, channels)).astype(np.float32) for h, w in sizes]
  padded = np.zeros((len(sizes), *canvas, channels), np.float32)
  for i, x in enumerate(alone):
    padded[i, :x.shape[0], :x.shape[1]] = x
  return padded, alone


@pytest.mark.parametrize('size', [1, 7, 8, 9, 15, 16, 17, 31, 33, 47, 48])
def test_valid_positions_follow_the_stride_two_layers_output_sizes(size):
  """A chain of 3x3 stride-2 convolutions with padding 1 maps an image of `size` pixels to the positions
  valid_positions counts in a 48-pixel canvas."""
  x = jnp.ones((1, size, size, 1))
  canvas = 48
  for level in range(1, 4):
    x = jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1)), (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    mask = valid_positions(jnp.asarray([[size, size]]), (canvas, canvas), (canvas >> level,) * 2)
    assert int(mask[0, :, 0].sum()) == x.shape[1] and int(mask[0, 0].sum()) == x.shape[2]


def test_masked_mean_is_the_mean_of_each_image_alone():
  padded, alone = _padded(np.random.default_rng(0), SIZES, (8, 8), 3)
  valid = ValidRegion(jnp.asarray(SIZES), (8, 8))
  got = masked_mean(jnp.asarray(padded) + 5.0 * (1 - valid.mask(padded)[..., None]), valid.mask(padded))
  for i, x in enumerate(alone):
    np.testing.assert_allclose(np.asarray(got[i, 0, 0]), x.mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)


def _head_outputs(module, padded, alone, sizes, extra=()):
  """(padded run with valid, padded run without, each image alone) of a head on zero-padded features."""
  variables = module.init(jax.random.key(0), jnp.asarray(padded), *[jnp.asarray(e[0]) for e in extra], train=False)
  valid = ValidRegion(jnp.asarray(sizes), padded.shape[1:3])
  masked = module.apply(variables, jnp.asarray(padded), *[jnp.asarray(e[0]) for e in extra], train=False,
                        valid=valid)
  unmasked = module.apply(variables, jnp.asarray(padded), *[jnp.asarray(e[0]) for e in extra], train=False)
  singles = [module.apply(variables, jnp.asarray(x[None]), *[jnp.asarray(e[1][i][None]) for e in extra],
                          train=False) for i, x in enumerate(alone)]
  pick = (lambda y: y['logits']) if isinstance(masked, dict) else (lambda y: y)
  return np.asarray(pick(masked)), np.asarray(pick(unmasked)), [np.asarray(pick(s))[0] for s in singles]


@pytest.mark.parametrize('head', ['enc', 'ocr', 'aspp'])
def test_a_head_on_zero_padded_features_with_its_valid_region_gives_each_image_alone(head):
  """Zero padding is what the convolutions of the image alone see at its border, so only the pooling over
  positions tells a padded image from the image alone: with `valid` each head's logits equal the image's own
  (ASPP's bottleneck 3x3 conv sees the broadcast pooled branch in the padding: its last row and column are left
  out); without, they do not."""
  rng = np.random.default_rng(1)
  padded, alone = _padded(rng, SIZES, (8, 8), 6)
  extra = ()
  if head == 'enc':
    module = encnet.EncHead(num_classes=5, channels=8, num_codes=4)
  elif head == 'ocr':
    module = ocr.OCRHead(num_classes=5, channels=8, key_channels=4, dropout=0.0)
    extra = (_padded(rng, SIZES, (8, 8), 5),)
  else:
    module = aspp.ASPPHead(num_classes=5, channels=8, dilations=(1, 2), dropout=0.0)
  masked, unmasked, singles = _head_outputs(module, padded, alone, SIZES, extra)
  trim = 1 if head == 'aspp' else 0
  differs = False
  for i, ((h, w), single) in enumerate(zip(SIZES, singles)):
    region = (slice(0, h - trim), slice(0, w - trim))
    np.testing.assert_allclose(masked[i][region], single[region], rtol=1e-4, atol=1e-5)
    differs |= not np.allclose(unmasked[i][region], single[region], rtol=1e-4, atol=1e-5)
  assert differs  # the padding does change unmasked pooling


def test_bucketed_plan_puts_every_image_once_in_batches_no_smaller_than_its_rounded_size():
  rng = np.random.default_rng(2)
  originals = rng.integers(10, 90, size=(23, 2))
  resized = originals // 2 + 1
  bounds = (46, 46), (89, 89)  # hold every resized and original size, and are not multiples of the bucket
  plan = eval_plan.bucketed_plan(originals, resized, 4, 8, *bounds)
  assert plan.num_batches == 6 and sorted(plan.order.tolist()) == list(range(24))  # 23 images + 1 padding
  for b in range(plan.num_batches):
    for canvas, sizes, bound in ((plan.image_canvases[b], resized, bounds[0]),
                                 (plan.label_canvases[b], originals, bounds[1])):
      members = [eval_plan.round_up(sizes[i], 8) for i in plan.order[b * 4:(b + 1) * 4] if i < 23]
      assert canvas == tuple(min(max(m[a] for m in members), bound[a]) for a in (0, 1))
  rounded = [eval_plan.round_up(resized[i], 8) for i in plan.order[:23]]
  assert rounded == sorted(rounded)  # similar sizes side by side
  assert len(plan.shapes()) <= len({tuple(r) for r in rounded})


class _VariedSizes:
  """Labelled random images of the given sizes (a fixture of an eval split of varied shapes)."""

  def __init__(self, sizes, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    self.samples = [{'image': rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                     'label': rng.integers(0, num_classes, (h, w), dtype=np.uint8), 'name': f'{i}'}
                    for i, (h, w) in enumerate(sizes)]

  def __len__(self):
    return len(self.samples)

  def __getitem__(self, index):
    return dict(self.samples[index])


def test_bucketed_evaluation_with_unit_buckets_scores_each_image_at_its_own_shape():
  """Pairs of same-sized images in batches of 2 with buckets of 1 pixel: no image is padded, so the evaluation's
  confusion matrix is that of each image run alone at its own size, and one program is compiled per size."""
  config = use_encnet(get_config())
  config.data.eval_size = config.data.eval_label_size = (40, 40)
  config.eval.shape_bucket = 1
  exp = experiment.build(config, jax.devices()[:1])
  state = exp.init_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  sizes = [(36, 20), (24, 32), (36, 20), (29, 29), (24, 32), (29, 29), (38, 40)]  # sorted: pairs, then one
  source = _VariedSizes(sizes, exp.info.num_classes)
  plan = eval_plan.plan(source, config.data, 2, config.eval)
  assert plan.shapes() == {((h, w), (h, w)) for h, w in set(sizes)}
  batches, _ = pipeline.eval_batches(source, config.data, 2, eval_config=config.eval, process_index=0,
                                     process_count=1, worker_count=0)
  got = sum(np.asarray(exp.eval_step(variables, parallel.to_global(b, exp.mesh))['confusion']) for b in batches)
  expected = 0
  for sample in source.samples:
    logits = exp.predict(variables, jnp.asarray(sample['image'][None]))
    labels = jnp.asarray(sample['label'][None])
    expected = expected + np.asarray(metrics.confusion_matrix(jnp.argmax(logits, -1), labels, exp.info.num_classes,
                                                              255))
  np.testing.assert_array_equal(got, expected)
  assert int(got.sum()) == sum(h * w for h, w in sizes)


def _tiny_segmentor(kind):
  if kind == 'aspp':
    model = tiny_model_config()
    models.set_head(model, 'decode_head', HEADS.config('aspp', reads=(3,), channels=8, dilations=(1, 2, 3)))
  else:  # EncNet with lateral connections: the Encoding layer and the laterals' resizes
    model = tiny_model_config(kind, **({'lateral': True} if kind == 'enc' else {}))
  return build_model(model, 5)


@pytest.mark.parametrize('kind', ['fcn', 'enc', 'aspp'])
def test_a_resnet_segmentor_gives_each_image_of_a_padded_batch_its_own_logits(kind):
  """Images of varied sizes padded into one 40x40 batch with their valid_size: each image's logits (output
  stride 8) equal those of the image alone at its own size; without valid_size they do not."""
  sizes = ((33, 21), (40, 40), (17, 9))
  rng = np.random.default_rng(3)
  alone = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in sizes]
  padded = np.full((len(sizes), 40, 40, 3), 0.7, np.float32)  # a pad value the network would notice
  for i, x in enumerate(alone):
    padded[i, :x.shape[0], :x.shape[1]] = x
  model = _tiny_segmentor(kind)
  variables = model.init(jax.random.key(0), jnp.asarray(padded), train=False)
  # BatchNorm statistics away from (0, 1), so that the padding's activations are far from zero.
  variables = jax.tree_util.tree_map(lambda v: v + 0.3 * jax.random.uniform(jax.random.key(1), v.shape), variables)
  masked = model.apply(variables, jnp.asarray(padded), train=False, valid_size=jnp.asarray(sizes))['logits']
  unmasked = model.apply(variables, jnp.asarray(padded), train=False)['logits']
  differs = False
  for i, x in enumerate(alone):
    own = np.asarray(model.apply(variables, jnp.asarray(x[None]), train=False)['logits'][0])
    h, w = own.shape[:2]
    np.testing.assert_allclose(np.asarray(masked[i, :h, :w]), own, rtol=1e-4, atol=1e-4)
    differs |= not np.allclose(np.asarray(unmasked[i, :h, :w]), own, rtol=1e-4, atol=1e-4)
  assert differs


def test_hrnet_ocr_gives_each_image_of_a_padded_batch_its_own_logits():
  """HRNet resizes its lower branches inside the network and the OCR head concatenates resized stages: within
  each image's region, as the image alone, its logits are its own (canvas 64, a multiple of HRNet's stride 32)."""
  config = use_ocrnet(get_config())
  model = build_model(config.model, 5)
  sizes = ((45, 27), (64, 64), (33, 50))
  rng = np.random.default_rng(4)
  alone = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in sizes]
  padded = np.full((len(sizes), 64, 64, 3), 0.7, np.float32)
  for i, x in enumerate(alone):
    padded[i, :x.shape[0], :x.shape[1]] = x
  variables = model.init(jax.random.key(0), jnp.asarray(padded), train=False)
  masked = model.apply(variables, jnp.asarray(padded), train=False, valid_size=jnp.asarray(sizes))['logits']
  for i, x in enumerate(alone):
    own = np.asarray(model.apply(variables, jnp.asarray(x[None]), train=False)['logits'][0])
    h, w = own.shape[:2]
    scale = np.abs(own).max()
    np.testing.assert_allclose(np.asarray(masked[i, :h, :w]) / scale, own / scale, atol=1e-5)
