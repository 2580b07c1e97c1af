"""EncNet: the Context Encoding Module's math, the head's outputs and parameters, training-only parts.

Full-size models are only traced abstractly (jax.eval_shape); real computation uses tiny models.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import config as config_lib
from ctxseg_jax import models, summary
from ctxseg_jax.models import build_model
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import HEADS
from ctxseg_jax.models.heads.encnet import EncHead, EncModule
from tests.tiny_config import get_config, tiny_model_config, use_encnet

NUM_CLASSES = 5


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl='rbg')  # fast to compile on CPU


def _rngs(seed: int = 0) -> dict[str, jax.Array]:
  return {'params': _key(seed), 'dropout': _key(seed + 1)}


def _abstract_variables(module: nn.Module, inputs, train: bool):
  return jax.eval_shape(lambda: module.init(_rngs(), inputs, train=train))


def _tiny_model_config(dtype: str = 'float32', lateral: bool = True, se_head: bool = True):
  return tiny_model_config('enc', dtype, lateral=lateral, se_head=se_head)


@pytest.fixture(scope='module')
def tiny():
  """A width-8 ResNet-18 EncNet with lateral connections, its train-mode variables and a (2, 64, 64, 3) batch."""
  model = build_model(_tiny_model_config(), NUM_CLASSES)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = jax.jit(lambda x: model.init(_rngs(), x, train=True))(x)
  return model, variables, x


# -------------------------------------------------------------------------------------------- EncModule math

def _numpy_bn(x: np.ndarray, axes: tuple[int, ...], channel_axis: int, scale, bias, eps=1e-5) -> np.ndarray:
  """Training-mode BatchNorm: statistics over `axes`, biased variance, per-channel affine."""
  mean = x.mean(axis=axes, keepdims=True)
  var = x.var(axis=axes, keepdims=True)
  shape = [1] * x.ndim
  shape[channel_axis] = -1
  return (x - mean) / np.sqrt(var + eps) * scale.reshape(shape) + bias.reshape(shape)


def _numpy_enc_module(x: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
  """The Encoding layer and EncModule of mmseg / PyTorch-Encoding written out in float64 on an NHWC input
  (train-mode BatchNorm)."""
  b, h, w, c = x.shape
  relu = lambda v: np.maximum(v, 0)  # noqa: E731
  proj = np.einsum('bhwi,io->bhwo', x, p['encoding_project']['conv']['kernel'][0, 0])
  proj = relu(_numpy_bn(proj, (0, 1, 2), 3, p['encoding_project']['bn']['scale'], p['encoding_project']['bn']['bias']))
  flat = proj.reshape(b, h * w, c)  # (B, N, D)
  codewords, smoothing = p['encoding']['codewords'], p['encoding']['scale']  # (K, D), (K,)
  residual = flat[:, :, None, :] - codewords[None, None]  # (B, N, K, D), the references' broadcast form
  logits = smoothing * np.sum(residual**2, axis=-1)  # (B, N, K), no minus sign
  assign = np.exp(logits - logits.max(axis=-1, keepdims=True))
  assign /= assign.sum(axis=-1, keepdims=True)
  codes = np.einsum('bnk,bnkd->bkd', assign, residual)  # (B, K, D)
  # BatchNorm1d(K) on (B, K, D): one channel per code, statistics over the batch and D.
  codes = relu(_numpy_bn(codes, (0, 2), 1, p['encoding_norm']['scale'], p['encoding_norm']['bias']))
  encoded = codes.mean(axis=1)  # (B, D)
  gamma = 1 / (1 + np.exp(-(encoded @ p['fc']['kernel'] + p['fc']['bias'])))
  return encoded, relu(x + x * gamma[:, None, None, :])


def test_enc_module_matches_the_reference_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
  module = EncModule(num_codes=4)
  variables = module.init(_key(0), jnp.asarray(x), train=True)
  params = jax.tree.map(lambda v: np.asarray(v, np.float64), variables['params'])
  # Non-trivial BatchNorm affine parameters, so a wrong statistics axis cannot hide behind scale 1, bias 0.
  params['encoding_norm']['scale'] = rng.uniform(0.5, 1.5, 4)
  params['encoding_norm']['bias'] = rng.uniform(-0.5, 0.5, 4)
  params['encoding_project']['bn']['bias'] = rng.uniform(-0.2, 0.2, 6)
  (encoded, y), updates = module.apply({**variables, 'params': params}, jnp.asarray(x), train=True,
                                       mutable=['batch_stats'])
  want_encoded, want_y = _numpy_enc_module(x.astype(np.float64), params)
  np.testing.assert_allclose(np.asarray(encoded), want_encoded, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-4, atol=1e-5)
  assert encoded.shape == (3, 6) and y.shape == x.shape
  # The code-axis BatchNorm keeps one running statistic per code.
  assert updates['batch_stats']['encoding_norm']['mean'].shape == (4,)


def test_enc_module_parameters():
  variables = EncModule(num_codes=32).init(_key(0), jnp.zeros((2, 4, 4, 64)), train=False)
  shapes = jax.tree.map(lambda v: v.shape, variables['params'])
  assert shapes == {
      'encoding_project': {'conv': {'kernel': (1, 1, 64, 64)}, 'bn': {'scale': (64,), 'bias': (64,)}},
      'encoding': {'codewords': (32, 64), 'scale': (32,)},
      'encoding_norm': {'scale': (32,), 'bias': (32,)},
      'fc': {'kernel': (64, 64), 'bias': (64,)},
  }
  assert set(variables['batch_stats']) == {'encoding_project', 'encoding_norm'}


def test_linear_layers_use_pytorch_default_init():
  head = EncHead(num_classes=150, channels=512, num_codes=32)
  features = [jnp.zeros((1, 4, 4, c)) for c in (64, 128, 1024)]
  params = jax.jit(lambda: head.init(_rngs(), features, train=True))()['params']
  bound = 1 / np.sqrt(512)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
  for layer in (params['enc_module']['fc'], params['se_layer']):
    for value in (layer['kernel'], layer['bias']):
      value = np.asarray(value)
      assert np.abs(value).max() <= bound and np.abs(value).max() > 0.9 * bound
  # Uniform on the interval: std = bound / sqrt(3).
  assert abs(np.asarray(params['se_layer']['kernel']).std() / (bound / np.sqrt(3)) - 1) < 0.02


# ------------------------------------------------------------------------------------------------ EncHead

def test_registry_has_the_enc_head():
  assert HEADS['enc'].outputs == ('logits', 'se_logits')


def test_train_outputs_and_shapes(tiny):
  model, variables, x = tiny
  out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': _key(5)},
                                            mutable=['batch_stats']))(variables, x)
  stages = out.pop('stage_features')
  assert len(stages) == 4
  assert {k: v.shape for k, v in out.items()} == {
      'logits': (2, 8, 8, NUM_CLASSES), 'aux_logits': (2, 8, 8, NUM_CLASSES), 'se_logits': (2, NUM_CLASSES)}
  assert all(v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v))) for v in out.values())


def test_eval_outputs_logits_only(tiny):
  model, variables, x = tiny
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert set(out) == {'logits'} and out['logits'].shape == (2, 8, 8, NUM_CLASSES)


def test_eval_mode_init_excludes_se_layer_and_aux_head(tiny):
  model, train_vars, x = tiny
  eval_vars = _abstract_variables(model, x, train=False)
  assert set(train_vars['params']) == {'backbone', 'decode_head', 'aux_head'}
  assert set(eval_vars['params']) == {'backbone', 'decode_head'}
  assert 'se_layer' in train_vars['params']['decode_head']
  assert 'se_layer' not in eval_vars['params']['decode_head']
  se_layer = 16 * NUM_CLASSES + NUM_CLASSES
  assert _count(eval_vars['params']) == (_count(train_vars['params']) - _count(train_vars['params']['aux_head'])
                                         - se_layer)
  # Inference runs on the inference parameters alone.
  inference = {'params': {k: v for k, v in train_vars['params'].items() if k != 'aux_head'},
               'batch_stats': {k: v for k, v in train_vars['batch_stats'].items() if k != 'aux_head'}}
  inference['params']['decode_head'] = {k: v for k, v in inference['params']['decode_head'].items()
                                        if k != 'se_layer'}
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(inference, x)
  assert out['logits'].shape == (2, 8, 8, NUM_CLASSES)


def test_se_head_off_gives_no_se_logits():
  model = build_model(_tiny_model_config(lateral=False, se_head=False), NUM_CLASSES)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(_rngs(), x, train=True), x)
  assert 'se_layer' not in variables['params']['decode_head']
  out, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': _key(1)},
                                                   mutable=['batch_stats']), variables, x)
  assert set(out) == {'logits', 'aux_logits', 'stage_features'}


def test_lateral_connections_add_exactly_their_layers():
  config = _tiny_model_config(lateral=True)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  counts = {}
  for lateral in (False, True):
    config.heads.decode_head.lateral = lateral
    model = build_model(config, NUM_CLASSES)
    counts[lateral] = _count(jax.eval_shape(lambda x: model.init(_rngs(), x, train=False), x)['params'])
  _, c2, c3, _ = (8 * 2**stage for stage in range(4))  # width-8 ResNet-18 (BasicBlock: no expansion)
  c = config.heads.decode_head.channels
  conv_bn = lambda cin, cout, k: k * k * cin * cout + 2 * cout  # noqa: E731
  assert counts[True] - counts[False] == conv_bn(c2, c, 1) + conv_bn(c3, c, 1) + conv_bn(3 * c, c, 3)


def test_lateral_inputs_are_resized_to_the_bottleneck():
  # At output stride 16 stage 2 is twice the size of stages 3 and 4; the laterals are resized to the latter.
  head = EncHead(num_classes=3, channels=8, num_codes=4, lateral=True)
  features = [jnp.ones((2, 16, 12, 6)), jnp.ones((2, 8, 6, 10)), jnp.ones((2, 8, 6, 12))]
  out = head.init_with_output(_rngs(), features, train=False)[0]
  assert out['logits'].shape == (2, 8, 6, 3)
  with pytest.raises(ValueError, match='three backbone stages'):
    head.init(_rngs(), features[1:], train=False)


def test_bfloat16_compute_returns_float32(tiny):
  _, variables, x = tiny
  bf16 = build_model(_tiny_model_config('bfloat16'), NUM_CLASSES)
  f32 = build_model(_tiny_model_config('float32'), NUM_CLASSES)
  out, _ = jax.jit(lambda v, x: bf16.apply(v, x, train=True, rngs={'dropout': _key(3)},
                                           mutable=['batch_stats']))(variables, x)
  assert all(f.dtype == jnp.bfloat16 for f in out.pop('stage_features'))
  assert all(v.dtype == jnp.float32 for v in out.values())
  infer = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=False)['logits'])  # noqa: E731
  bf16_logits, f32_logits = infer(bf16)(variables, x), infer(f32)(variables, x)
  assert bf16_logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(bf16_logits)))
  np.testing.assert_allclose(bf16_logits, f32_logits, atol=0.1 * float(jnp.abs(f32_logits).max()) + 1e-3)


def test_gradients_reach_every_parameter(tiny):
  model, variables, x = tiny

  def loss_fn(params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True, rngs={'dropout': _key(4)},
                         mutable=['batch_stats'])
    return jnp.mean(out['logits'] ** 2) + jnp.mean(out['se_logits'] ** 2) + jnp.mean(out['aux_logits'] ** 2)

  grads = jax.jit(jax.grad(loss_fn))(variables['params'])
  head = grads['decode_head']
  for path in (('enc_module', 'encoding', 'codewords'), ('enc_module', 'encoding', 'scale'),
               ('enc_module', 'fc', 'kernel'), ('se_layer', 'kernel'), ('lateral_convs_0', 'conv', 'kernel'),
               ('fusion', 'conv', 'kernel'), ('conv_seg', 'kernel')):
    leaf = head
    for part in path:
      leaf = leaf[part]
    assert bool(jnp.all(jnp.isfinite(leaf))) and float(jnp.abs(leaf).sum()) > 0, path


def test_full_size_encnet_r101_shapes():
  config = config_lib.base_config().model
  config.backbone = BACKBONES.config('resnet', depth=101)
  models.set_head(config, 'decode_head', HEADS.config('enc', reads=(1, 2, 3), lateral=True))
  model = build_model(config, num_classes=59)
  x = jax.ShapeDtypeStruct((2, 480, 480, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(_rngs(), x, train=True), x)
  shapes = jax.tree.map(lambda v: v.shape, variables['params']['decode_head'])
  assert shapes['lateral_convs_0']['conv']['kernel'] == (1, 1, 512, 512)
  assert shapes['lateral_convs_1']['conv']['kernel'] == (1, 1, 1024, 512)
  assert shapes['fusion']['conv']['kernel'] == (3, 3, 1536, 512)
  assert shapes['enc_module']['encoding']['codewords'] == (32, 512)
  assert shapes['se_layer']['kernel'] == (512, 59)
  out, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': _key(1)},
                                                   mutable=['batch_stats']), variables, x)
  assert [f.shape[1:] for f in out.pop('stage_features')] == [(120, 120, 256), (60, 60, 512), (60, 60, 1024),
                                                              (60, 60, 2048)]
  assert {k: v.shape for k, v in out.items()} == {
      'logits': (2, 60, 60, 59), 'aux_logits': (2, 60, 60, 59), 'se_logits': (2, 59)}


def test_summary_inference_count_excludes_se_layer_and_aux_head():
  config = use_encnet(get_config())  # 8 classes, width-8 ResNet-18 (stage 3: 32 channels), head 16, aux head 8
  counts = summary.parameter_counts(config)
  se_layer = 16 * 8 + 8
  aux_head = (3 * 3 * 32 * 8 + 2 * 8) + (8 * 8 + 8)
  assert counts['params_total'] - counts['params_inference'] == se_layer + aux_head
