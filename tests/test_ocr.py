"""OCRNet's head: the gather and the object attention against direct formulas, and the head in a model."""
import jax
import jax.numpy as jnp
import numpy as np

from ctxseg_jax import models, reporting, summary, train
from ctxseg_jax.models.heads import HEADS
from ctxseg_jax.models.heads.ocr import ObjectContext, gather_objects
from tests.shipped_configs import load
from tests.tiny_config import get_config, tiny_model_config


def _key(seed):
  return jax.random.key(seed, impl='rbg')


def test_gather_is_the_softmax_weighted_mean_of_each_region():
  features = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
  logits = np.random.default_rng(1).normal(size=(2, 3, 4, 6)) * 3
  got = gather_objects(jnp.asarray(features), jnp.asarray(logits), scale=2.0)
  for b in range(2):
    for k in range(6):
      weights = np.exp(2 * logits[b, ..., k] - np.max(2 * logits[b, ..., k]))
      weights /= weights.sum()
      np.testing.assert_allclose(got[b, k], np.einsum('hw,hwc->c', weights, features[b]), rtol=1e-5, atol=1e-6)


def test_object_context_attends_over_the_regions():
  block = ObjectContext(key_channels=4)
  x = jax.random.normal(_key(0), (2, 3, 5, 6))
  objects = jax.random.normal(_key(1), (2, 7, 6))
  variables = block.init({'params': _key(2)}, x, objects, train=False)
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(_key(3), v.shape), variables)
  got = block.apply(variables, x, objects, train=False)
  params, stats = variables['params'], variables['batch_stats']

  def f(name, y):  # 1x1 conv, BN with running statistics, ReLU
    p, s = params[name], stats[name]
    y = y @ p['conv']['kernel'][0, 0]
    return jax.nn.relu((y - s['bn']['mean']) / jnp.sqrt(s['bn']['var'] + 1e-5) * p['bn']['scale'] + p['bn']['bias'])

  query = f('f_pixel_1', f('f_pixel_0', x)).reshape(2, 15, 4)
  key = f('f_object_1', f('f_object_0', objects))
  value = f('f_down', objects)
  relation = jax.nn.softmax(jnp.einsum('bnc,bkc->bnk', query, key) / 2.0, axis=-1)  # sqrt(key_channels) = 2
  expected = f('f_up', jnp.einsum('bnk,bkc->bnc', relation, value).reshape(2, 3, 5, 4))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_ocr_head_reads_the_auxiliary_region_logits_at_inference():
  model_config = tiny_model_config()
  models.set_head(model_config, 'aux_head', HEADS.config('fcn', reads=(2,), kernel_size=1, num_convs=1, channels=8,
                                                         concat_input=False, outputs=('aux_logits',)))
  models.set_head(model_config, 'decode_head', HEADS.config('ocr', reads=(3,), reads_outputs=('aux_logits',),
                                                            channels=16, key_channels=8))
  assert models.running_order(model_config.heads) == ['aux_head', 'decode_head']
  model = models.build_model(model_config, 5)
  x = jax.random.normal(_key(4), (2, 32, 32, 3))
  variables = jax.jit(lambda x: model.init({'params': _key(5), 'dropout': _key(6)}, x, train=False))(x)
  assert {'aux_head', 'decode_head'} <= set(variables['params'])  # the region head is part of inference
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert out['logits'].shape == out['aux_logits'].shape == (2, 4, 4, 5)
  assert bool(jnp.all(jnp.isfinite(out['logits'])))


def test_ocrnet_configs_keep_the_soft_region_head_at_inference():
  for path in ('configs/ocrnet_hr48_cityscapes.py', 'configs/ocrnet_hr48_cityscapes_mmseg.py'):
    counts = summary.parameter_counts(load(path))
    assert counts['params_inference'] == counts['params_total'], path  # no training-only head


def test_a_tiny_ocrnet_trains_with_ohem_on_its_logits(tmp_path):
  config = get_config()
  models.set_head(config.model, 'aux_head', HEADS.config('fcn', reads=(2,), kernel_size=1, num_convs=1, channels=8,
                                                         concat_input=False, conv_bias=True, outputs=('aux_logits',)))
  models.set_head(config.model, 'decode_head', HEADS.config('ocr', reads=(3,), reads_outputs=('aux_logits',),
                                                            channels=16, key_channels=8))
  config.loss.terms.ce.reduction = 'ohem'
  config.loss.terms.ce.ohem_min_kept = 500
  config.loss.terms.ce.ohem_group_size = 4
  config.train.steps = 2
  train.train(config, tmp_path, devices=jax.devices()[:1])
  records = [r for r in reporting.read_metrics(tmp_path) if r['split'] == 'train']
  assert records and all(np.isfinite(r['loss_ce']) and r['loss_ce'] > 0 for r in records)


def test_ocr_head_equals_hrnet_ocrs_nchw_formulation():
  """The whole head in training mode (batch statistics, no dropout) against HRNet-OCR's NCHW code as
  bench/ocr_head.py writes it, with the same weights."""
  from bench.ocr_head import direct_head
  rng = np.random.default_rng(0)
  features = rng.standard_normal((2, 6, 10, 12)).astype(np.float32)
  regions = 3 * rng.standard_normal((2, 6, 10, 5)).astype(np.float32)
  head = HEADS['ocr'].build(HEADS.config('ocr', channels=16, key_channels=8, dropout=0.0, weight_init='pytorch'),
                            num_classes=5, dtype=jnp.float32)
  variables = head.init({'params': _key(0)}, features, regions, train=False)
  got, _ = head.apply(variables, features, regions, train=True, mutable=['batch_stats'])
  params = variables['params']
  flat = {'bottleneck': params['bottleneck']['conv'], 'fuse': params['fuse']['conv'], 'cls': params['conv_seg'],
          **{name: params['object_context'][name]['conv']
             for name in ('f_pixel_0', 'f_pixel_1', 'f_object_0', 'f_object_1', 'f_down', 'f_up')}}
  torch_layout = {}
  for name, conv in flat.items():
    torch_layout[f'{name}.weight'] = jnp.transpose(conv['kernel'], (3, 2, 0, 1))  # HWIO -> OIHW
    if 'bias' in conv:
      torch_layout[f'{name}.bias'] = conv['bias']
  nchw = lambda x: jnp.transpose(jnp.asarray(x), (0, 3, 1, 2))  # noqa: E731
  want = direct_head(torch_layout, nchw(features), nchw(regions), 1.0)
  np.testing.assert_allclose(nchw(got), want, rtol=1e-4, atol=1e-4)
