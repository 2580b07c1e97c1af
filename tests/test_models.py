"""Tests of the model zoo: layers (resize, conv), dilated ResNet, FCN head, segmentor and registry.

Full-size models are only traced abstractly (jax.eval_shape); real computation uses tiny models.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import config as config_lib
from ctxseg_jax import models
from ctxseg_jax.models import build_model
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import HEADS
from ctxseg_jax.models.segmentor import HeadSpec
from ctxseg_jax.models.backbones.resnet import Bottleneck, ResNet, block_plan
from ctxseg_jax.models.heads.fcn import FCNHead, classifier_dropout
from ctxseg_jax.models.layers.conv import ConvBNReLU, conv2d
from ctxseg_jax.models.layers.resize import resize_bilinear
from tests.tiny_config import tiny_model_config


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract_variables(module: nn.Module, shape=(1, 64, 64, 3), train: bool = False):
  """Variable shapes of `module` without allocating them."""
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  return jax.eval_shape(lambda: module.init(rngs, jnp.zeros(shape, jnp.float32), train=train))


def _key(seed: int) -> jax.Array:
  # Same distributions as the default threefry keys, but XLA's RngBitGenerator compiles much faster on CPU.
  return jax.random.key(seed, impl='rbg')


def _init(module: nn.Module, shape, train: bool = False, seed: int = 0):
  """Jitted init of real parameter values."""
  rngs = {'params': _key(seed), 'dropout': _key(seed + 1)}
  return jax.jit(lambda x: module.init(rngs, x, train=train))(jnp.zeros(shape, jnp.float32))


# ----------------------------------------------------------------------------------------------- resize

def _torch_bilinear_reference(x: np.ndarray, size, align_corners: bool) -> np.ndarray:
  """PyTorch's upsample_bilinear2d (explicit output size), written per output pixel from its formulas."""
  _, in_h, in_w, _ = x.shape
  out_h, out_w = size

  def source(in_size, out_size, dst):
    if align_corners:
      scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
      return np.float32(scale * np.float32(dst))
    scale = np.float32(in_size / out_size)
    return max(np.float32(0), np.float32(scale * np.float32(dst + 0.5) - np.float32(0.5)))

  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]), np.float64)
  for i in range(out_h):
    h = source(in_h, out_h, i)
    h0 = int(h)
    h1 = h0 + (1 if h0 < in_h - 1 else 0)
    lh1 = h - h0
    lh0 = 1 - lh1
    for j in range(out_w):
      w = source(in_w, out_w, j)
      w0 = int(w)
      w1 = w0 + (1 if w0 < in_w - 1 else 0)
      lw1 = w - w0
      lw0 = 1 - lw1
      out[:, i, j] = (lh0 * (lw0 * x[:, h0, w0] + lw1 * x[:, h0, w1]) +
                      lh1 * (lw0 * x[:, h1, w0] + lw1 * x[:, h1, w1]))
  return out


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('size', [(29, 41), (7, 5), (13, 40), (4, 17), (1, 1), (26, 34)])
def test_resize_bilinear_matches_pytorch_formulas(size, align_corners):
  # Input 13x17: up by non-integer factors, down by non-integer factors, mixed, to 1x1, and exactly x2.
  x = np.random.default_rng(0).normal(size=(2, 13, 17, 3)).astype(np.float32)
  got = resize_bilinear(jnp.asarray(x), size, align_corners=align_corners)
  assert got.shape == (2, *size, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _torch_bilinear_reference(x, size, align_corners), atol=2e-6)


def test_resize_bilinear_half_pixel_equals_jax_image_resize_without_antialias():
  x = jax.random.normal(jax.random.key(0), (1, 13, 17, 2))
  for size in [(29, 41), (7, 5)]:
    expected = jax.image.resize(x, (1, *size, 2), 'linear', antialias=False)
    np.testing.assert_allclose(resize_bilinear(x, size), expected, atol=1e-6)


def test_resize_bilinear_keeps_dtype_and_identity():
  x = jax.random.normal(jax.random.key(0), (1, 6, 8, 2))
  for align_corners in (False, True):
    np.testing.assert_array_equal(resize_bilinear(x, (6, 8), align_corners=align_corners), x)
  y = resize_bilinear(x.astype(jnp.bfloat16), (12, 16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), resize_bilinear(x, (12, 16)), atol=5e-2)
  # align_corners=True keeps the corner pixels.
  z = resize_bilinear(x, (11, 3), align_corners=True)
  np.testing.assert_allclose(z[:, [0, 0, -1, -1], [0, -1, 0, -1]], x[:, [0, 0, -1, -1], [0, -1, 0, -1]], atol=1e-6)


# ------------------------------------------------------------------------------------------------- conv

def test_conv2d_pads_symmetrically_like_pytorch():
  # A centre-tap 3x3 stride-2 conv: PyTorch (padding 1) samples even pixels; XLA 'SAME' would sample odd ones.
  kernel = np.zeros((3, 3, 1, 1), np.float32)
  kernel[1, 1] = 1
  x = jnp.arange(64, dtype=jnp.float32).reshape(1, 8, 8, 1)
  conv = conv2d(1, 3, stride=2)
  y = conv.apply({'params': {'kernel': jnp.asarray(kernel)}}, x)
  np.testing.assert_array_equal(y, x[:, ::2, ::2])
  # Dilated stride-1 conv keeps the size (padding = dilation).
  y = conv2d(4, 3, dilation=3).init_with_output(jax.random.key(0), jnp.zeros((1, 9, 7, 2)))[0]
  assert y.shape == (1, 9, 7, 4)


def test_init_statistics():
  variables = ConvBNReLU(256, 3).init(_key(0), jnp.zeros((1, 8, 8, 128)), train=False)
  kernel = variables['params']['conv']['kernel']
  assert kernel.dtype == jnp.float32
  # Kaiming normal, fan_out = 3 * 3 * 256, untruncated (max |w| well beyond 2 std among 295k samples).
  std = np.sqrt(2.0 / (3 * 3 * 256))
  assert abs(float(kernel.std()) / std - 1) < 0.01
  assert float(jnp.abs(kernel).max()) > 3.5 * std
  np.testing.assert_array_equal(variables['params']['bn']['scale'], 1)
  np.testing.assert_array_equal(variables['params']['bn']['bias'], 0)
  head = FCNHead(num_classes=64, channels=512, num_convs=0, concat_input=False)
  params = head.init(_key(0), jnp.zeros((1, 4, 4, 512)), train=False)['params']
  assert abs(float(params['conv_seg']['kernel'].std()) - 0.01) < 5e-4
  np.testing.assert_array_equal(params['conv_seg']['bias'], 0)


def test_pytorch_init_style_is_conv2d_reset_parameters():
  # nn.Conv2d(cin, cout, k): weight and bias U(-b, b), b = 1 / sqrt(cin * k * k); HRNet-OCR's heads keep it.
  head = FCNHead(num_classes=64, channels=256, num_convs=1, concat_input=False, kernel_size=1, conv_bias=True,
                 weight_init='pytorch')
  params = head.init(_key(0), jnp.zeros((1, 4, 4, 576)), train=False)['params']
  hidden, classifier = params['convs_0']['conv'], params['conv_seg']
  for conv, fan_in in ((hidden, 576), (classifier, 256)):
    bound = fan_in**-0.5
    kernel, bias = conv['kernel'], conv['bias']
    assert float(jnp.abs(kernel).max()) <= bound and float(jnp.abs(bias).max()) <= bound
    assert float(jnp.abs(kernel).max()) > 0.99 * bound
    assert abs(float(kernel.std()) / (bound / np.sqrt(3)) - 1) < 0.02  # the std of U(-b, b)
    assert float(jnp.abs(bias).min()) > 0  # drawn, not zero as mmcv's


# ----------------------------------------------------------------------------------------------- ResNet

# torchvision resnet18/50/101 parameter counts minus the fc layer (512*1000+1000 or 2048*1000+1000).
TORCHVISION_COUNTS = {18: 11_689_512 - 513_000, 50: 25_557_032 - 2_049_000, 101: 44_549_160 - 2_049_000}


@pytest.mark.parametrize('depth', [18, 50, 101])
def test_resnet_param_count_matches_torchvision(depth):
  variables = _abstract_variables(ResNet(depth=depth, stem='pytorch'))
  assert _count(variables['params']) == TORCHVISION_COUNTS[depth] == {
      18: 11_176_512, 50: 23_508_032, 101: 42_500_160}[depth]


def _stem_delta(stem: str, depth: int) -> int:
  """Parameter difference of a deep stem against the 7x7 'pytorch' stem (conv 7*7*3*64, BN 2*64), w = 64."""
  conv7 = 7 * 7 * 3 * 64
  if stem == 'v1c':
    # 3x3 convs 3->32, 32->32, 32->64 and BNs of 32, 32, 64 (the 64-channel BN replaces the pytorch stem's BN).
    return -conv7 + 9 * (3 * 32 + 32 * 32 + 32 * 64) + 2 * (32 + 32)
  # 's': 3x3 convs 3->64, 64->64, 64->128, BNs of 64, 64, 128 (the 128-channel BN replaces the 64-channel one).
  delta = -conv7 + 9 * (3 * 64 + 64 * 64 + 64 * 128) + 2 * (64 + 64 + 128 - 64)
  # Stage 1 then reads 128 channels instead of 64.
  if depth < 50:
    # BasicBlock layer1_0: conv1 3x3 grows by 9*64*64, and a 1x1 128->64 projection + BN appears.
    return delta + 9 * 64 * 64 + (128 * 64 + 2 * 64)
  # Bottleneck layer1_0: conv1 1x1 grows by 64*64, projection 1x1 grows by 64*256.
  return delta + 64 * 64 + 64 * 256


@pytest.mark.parametrize('stem', ['v1c', 's'])
@pytest.mark.parametrize('depth', [18, 50])
def test_deep_stem_param_counts(stem, depth):
  variables = _abstract_variables(ResNet(depth=depth, stem=stem))
  assert _count(variables['params']) == TORCHVISION_COUNTS[depth] + _stem_delta(stem, depth)


def test_stem_delta_arithmetic():
  assert _stem_delta('v1c', 50) == _stem_delta('v1c', 18) == 19_232  # ResNet50-V1c: 23,527,264
  assert _stem_delta('s', 50) == 123_776  # ResNet-50s: 23,631,808
  assert _stem_delta('s', 18) == 148_480


@pytest.mark.parametrize('output_stride, spatial', [
    (8, (128, 64, 64, 64)), (16, (128, 64, 32, 32)), (32, (128, 64, 32, 16))])
def test_resnet101_output_shapes(output_stride, spatial):
  model = ResNet(depth=101, stem='v1c', output_stride=output_stride)
  x = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
  variables = _abstract_variables(ResNet(depth=101, stem='v1c'))  # parameters do not depend on the stride
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert [o.shape for o in outputs] == [(2, s, s, c) for s, c in zip(spatial, (256, 512, 1024, 2048))]


def test_block_plan():
  r50 = block_plan(50, 8, contract_dilation=True)
  assert [len(stage) for stage in r50] == [3, 4, 6, 3]
  assert r50[0] == ((1, 1),) * 3
  assert r50[1] == ((2, 1),) + ((1, 1),) * 3
  assert r50[2] == ((1, 1),) + ((1, 2),) * 5
  assert r50[3] == ((1, 2), (1, 4), (1, 4))
  assert block_plan(50, 8, contract_dilation=False)[2:] == (((1, 2),) * 6, ((1, 4),) * 3)
  assert block_plan(101, 16, contract_dilation=True)[2:] == (((2, 1),) + ((1, 1),) * 22, ((1, 1), (1, 2), (1, 2)))
  assert block_plan(101, 16, contract_dilation=False)[3] == ((1, 2),) * 3
  assert block_plan(18, 32) == (((1, 1),) * 2, ((2, 1), (1, 1)), ((2, 1), (1, 1)), ((2, 1), (1, 1)))
  with pytest.raises(ValueError, match='depth'):
    block_plan(42)
  with pytest.raises(ValueError, match='output_stride'):
    block_plan(50, 4)


def test_zero_init_residual(tiny):
  backbone = tiny[1]['params']['backbone']  # mmseg default: the last BN of every block starts at scale 0
  np.testing.assert_array_equal(backbone['layer1_0']['bn2']['scale'], 0)
  np.testing.assert_array_equal(backbone['layer1_0']['bn1']['scale'], 1)
  np.testing.assert_array_equal(backbone['layer2_0']['downsample_bn']['scale'], 1)
  block = Bottleneck(8, stride=2, zero_init_last=True)
  params = block.init(_key(0), jnp.zeros((1, 8, 8, 16)), train=False)['params']
  np.testing.assert_array_equal(params['bn3']['scale'], 0)
  np.testing.assert_array_equal(params['bn2']['scale'], 1)
  params = Bottleneck(8).init(_key(0), jnp.zeros((1, 8, 8, 32)), train=False)['params']
  assert 'downsample_conv' not in params
  np.testing.assert_array_equal(params['bn3']['scale'], 1)


# ------------------------------------------------------------------------------------------------ heads

def test_fcn_head_param_count_by_hand():
  head = FCNHead(num_classes=5, channels=16, num_convs=2, concat_input=True)
  params = _abstract_variables(head, (1, 8, 8, 32))['params']
  conv_bn = lambda cin, cout: 3 * 3 * cin * cout + 2 * cout  # noqa: E731  (conv without bias, BN scale+bias)
  expected = conv_bn(32, 16) + conv_bn(16, 16) + conv_bn(32 + 16, 16) + (16 * 5 + 5)
  assert _count(params) == expected == 14_005
  aux = FCNHead(num_classes=5, channels=8, num_convs=1, concat_input=False)
  assert _count(_abstract_variables(aux, (1, 8, 8, 32))['params']) == conv_bn(32, 8) + 8 * 5 + 5
  # mmseg fcn_r50-d8 decode head for 150 classes.
  full = FCNHead(num_classes=150)
  assert _count(_abstract_variables(full, (1, 8, 8, 2048))['params']) == (
      conv_bn(2048, 512) + conv_bn(512, 512) + conv_bn(2560, 512) + 512 * 150 + 150)


def test_aspp_head_matches_the_direct_formula():
  """mmseg's ASPPHead at inference (BN at its initial running statistics, a scale of 1 / sqrt(1 + eps)): image
  pooling broadcast back, a 1x1 branch and 3x3 branches with dilation and padding d, concat, 3x3 bottleneck."""
  head = HEADS['aspp'].build(HEADS.config('aspp', channels=4, dilations=(1, 2, 3)), num_classes=3, dtype=jnp.float32)
  x = jax.random.normal(_key(0), (2, 7, 9, 5))
  variables = head.init(_key(1), x, train=False)
  got = head.apply(variables, x, train=False)
  params = variables['params']
  bn = 1 / np.sqrt(1 + 1e-5)

  def conv(y, kernel, dilation=1):
    pad = dilation * (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(y, kernel, (1, 1), [(pad, pad)] * 2, rhs_dilation=(dilation, dilation),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  pooled = jax.nn.relu(conv(x.mean(axis=(1, 2), keepdims=True), params['image_pool']['conv']['kernel']) * bn)
  branches = [jnp.broadcast_to(pooled, (2, 7, 9, 4))]
  for i, d in enumerate((1, 2, 3)):
    branches.append(jax.nn.relu(conv(x, params[f'aspp_{i}']['conv']['kernel'], d) * bn))
  y = jax.nn.relu(conv(jnp.concatenate(branches, -1), params['bottleneck']['conv']['kernel']) * bn)
  want = conv(y, params['conv_seg']['kernel']) + params['conv_seg']['bias']
  assert params['aspp_0']['conv']['kernel'].shape[:2] == (1, 1)
  assert params['aspp_1']['conv']['kernel'].shape[:2] == (3, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_projection_heads_give_unit_embeddings_in_training_only():
  """ContrastiveSeg's convmlp on each stage (1x1 C -> C with bias, BN, ReLU, 1x1 C -> d with bias), L2-normalised;
  as training-only heads they leave the inference model unchanged."""
  config = tiny_model_config()
  for stage in range(4):
    models.set_head(config, f'proj_{stage}', HEADS.config('projection', reads=(stage,), embed_dim=16, train_only=True,
                                                          outputs=(f'embed_{stage}',)))
  model = build_model(config, num_classes=5)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = model.init({'params': _key(0), 'dropout': _key(1)}, x, train=True)
  outputs, _ = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': _key(2)})
  for stage, channels in enumerate((8, 16, 32, 64)):
    embedding = outputs[f'embed_{stage}']
    assert embedding.dtype == jnp.float32 and embedding.shape[-1] == 16
    np.testing.assert_allclose(jnp.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-5)
    head = variables['params'][f'proj_{stage}']
    assert _count(head) == channels * channels + channels + 2 * channels + channels * 16 + 16
  eval_params = model.init({'params': _key(0)}, x, train=False)['params']
  baseline = build_model(tiny_model_config(), num_classes=5).init({'params': _key(0)}, x, train=False)['params']
  assert set(eval_params) == set(baseline) and _count(eval_params) == _count(baseline)


def test_fcn_head_without_convs_requires_matching_channels():
  head = FCNHead(num_classes=3, channels=8, num_convs=0, concat_input=False, dropout=0)
  logits = head.init_with_output(jax.random.key(0), jnp.ones((1, 4, 4, 8)), train=False)[0]
  assert logits.shape == (1, 4, 4, 3)
  with pytest.raises(ValueError, match='num_convs=0'):
    head.init(jax.random.key(0), jnp.ones((1, 4, 4, 6)), train=False)


def test_classifier_dropout_modes():
  x = jnp.ones((2, 16, 16, 64))
  rngs = {'dropout': _key(0)}
  channel = classifier_dropout(0.5, 'channel', train=True).apply({}, x, rngs=rngs)
  # Dropout2d: each (image, channel) map is all zero or all 1 / keep_prob.
  assert np.all(channel.min(axis=(1, 2)) == channel.max(axis=(1, 2)))
  assert 0 < float((channel == 0).mean()) < 1
  element = classifier_dropout(0.5, 'element', train=True).apply({}, x, rngs=rngs)
  assert np.any(element.min(axis=(1, 2)) != element.max(axis=(1, 2)))
  np.testing.assert_array_equal(classifier_dropout(0.5, 'channel', train=False).apply({}, x), x)
  assert classifier_dropout(0.0, 'channel', train=True) is None
  with pytest.raises(ValueError, match='dropout mode'):
    classifier_dropout(0.1, 'spatial', train=True)


# -------------------------------------------------------------------------------------------- segmentor

def test_registries_name_the_valid_choices():
  assert 'resnet' in BACKBONES and 'fcn' in HEADS and 'enc' in HEADS
  c = tiny_model_config()
  c.heads.decode_head.type = 'fnc'
  with pytest.raises(ValueError, match=r"heads.decode_head.type='fnc' is not a known head; .*did you mean 'fcn'"):
    build_model(c, 3)
  with pytest.raises(KeyError, match="has no settings \\['chanels'\\]"):
    HEADS.config('fcn', chanels=3)


@pytest.fixture(scope='module')
def tiny():
  """A depth-18, width-8 FCN, its training-mode variables and a (2, 64, 64, 3) input batch."""
  model = build_model(tiny_model_config(), num_classes=5)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  return model, _init(model, x.shape, train=True), x


def test_tiny_fcn_eval_model_has_only_inference_params(tiny):
  model, train_vars, x = tiny
  eval_vars = _abstract_variables(model, x.shape, train=False)
  assert set(train_vars['params']) == {'backbone', 'decode_head', 'aux_head'}
  assert set(eval_vars['params']) == {'backbone', 'decode_head'}
  assert _count(eval_vars['params']) < _count(train_vars['params'])
  assert _count(eval_vars['params']) + _count(train_vars['params']['aux_head']) == _count(train_vars['params'])
  assert set(eval_vars['batch_stats']) == {'backbone', 'decode_head'}


def test_tiny_fcn_eval_forward(tiny):
  model, train_vars, x = tiny
  inference_vars = {col: {k: v for k, v in tree.items() if k != 'aux_head'} for col, tree in train_vars.items()}
  outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(inference_vars, x)
  assert set(outputs) == {'logits'}
  assert outputs['logits'].shape == (2, 8, 8, 5) and outputs['logits'].dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(outputs['logits'])))


def test_tiny_fcn_train_forward_and_gradients(tiny):
  model, train_vars, x = tiny

  def loss_fn(params):
    out, updates = model.apply({**train_vars, 'params': params}, x, train=True,
                               rngs={'dropout': _key(3)}, mutable=['batch_stats'])
    return jnp.mean(out['logits'] ** 2) + 0.4 * jnp.mean(out['aux_logits'] ** 2), (out, updates)

  grads, (out, updates) = jax.jit(jax.grad(loss_fn, has_aux=True))(train_vars['params'])
  assert set(out) == {'logits', 'aux_logits', 'stage_features'}
  assert [f.shape for f in out['stage_features']] == [(2, 16, 16, 8), (2, 8, 8, 16), (2, 8, 8, 32), (2, 8, 8, 64)]
  assert out['logits'].shape == out['aux_logits'].shape == (2, 8, 8, 5)
  assert out['logits'].dtype == out['aux_logits'].dtype == jnp.float32
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads['decode_head']['conv_seg']['kernel']).sum()) > 0
  assert float(jnp.abs(grads['aux_head']['conv_seg']['kernel']).sum()) > 0
  assert float(jnp.abs(grads['backbone']['stem']['conv1']['conv']['kernel']).sum()) > 0
  # Running statistics moved away from their initial zero mean (PyTorch momentum 0.1).
  mean = updates['batch_stats']['backbone']['stem']['conv1']['bn']['mean']
  assert float(jnp.abs(mean).max()) > 0


def test_tiny_fcn_bfloat16_returns_float32(tiny):
  _, variables, x = tiny
  model = build_model(tiny_model_config(dtype='bfloat16'), num_classes=5)  # same parameters, bf16 compute
  out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': _key(3)},
                                            mutable=['batch_stats']))(variables, x)
  assert out['logits'].dtype == jnp.float32 and out['aux_logits'].dtype == jnp.float32
  infer = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=False)['logits'])  # noqa: E731
  bf16_logits = infer(model)(variables, x)
  f32_logits = infer(build_model(tiny_model_config(), num_classes=5))(variables, x)
  assert bf16_logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(bf16_logits)))
  np.testing.assert_allclose(bf16_logits, f32_logits, atol=0.1 * float(jnp.abs(f32_logits).max()) + 1e-3)


def test_full_size_fcn_r50_d8_shapes():
  model = build_model(config_lib.base_config().model, num_classes=150)
  variables = _abstract_variables(model, (2, 512, 512, 3), train=True)
  assert 'aux_head' in variables['params']
  x = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert {k: v.shape for k, v in outputs.items()} == {'logits': (2, 64, 64, 150)}


# ------------------------------------------------------------------------------------------- head wiring

def test_resize_concat_feeds_every_stage_resized_to_the_finest():
  model_config = tiny_model_config()
  models.set_head(model_config, 'decode_head', HEADS.config('linear', reads=(0, 1, 2, 3),
                                                             input_transform='resize_concat', dropout=0.0))
  model = build_model(model_config, num_classes=5)
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = _init(model, x.shape, train=False)
  # A 1x1 classifier on 8 + 16 + 32 + 64 concatenated channels.
  assert variables['params']['decode_head']['conv_seg']['kernel'].shape == (1, 1, 120, 5)
  logits = model.apply(variables, x, train=False)['logits']
  assert logits.shape == (2, 16, 16, 5)  # the finest stage's resolution (stride 4)
  stages = model.backbone.apply({'params': variables['params']['backbone'],
                                 'batch_stats': variables['batch_stats']['backbone']}, x, train=False)
  concat = jnp.concatenate([resize_bilinear(s, (16, 16)) for s in stages], axis=-1)
  conv = variables['params']['decode_head']['conv_seg']
  direct = jnp.einsum('bhwc,ck->bhwk', concat, conv['kernel'][0, 0]) + conv['bias']
  np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-5)


class _Refine(nn.Module):
  """A test head that reads backbone features and an earlier head's logits: features @ W + logits."""
  num_classes: int

  @nn.compact
  def __call__(self, features, logits, *, train: bool):
    return {'logits': nn.Dense(self.num_classes, name='proj')(features) + logits}


def test_a_head_reads_an_earlier_heads_output_and_training_only_heads_run_last():
  model_config = tiny_model_config()
  segmentor = build_model(model_config, num_classes=5)
  refine = HeadSpec(name='refine', module=_Refine(5), reads=(3,), reads_outputs=('logits',), train_only=True,
                    local_outputs=('logits',), outputs=('refined_logits',))
  model = segmentor.clone(heads=segmentor.heads + (refine,))
  x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
  variables = _init(model, x.shape, train=True)
  out, _ = model.apply(variables, x, train=True, rngs={'dropout': _key(0)}, mutable=['batch_stats'])
  stage4 = out['stage_features'][3].astype(jnp.float32)
  proj = variables['params']['refine']['proj']
  np.testing.assert_allclose(out['refined_logits'], stage4 @ proj['kernel'] + proj['bias'] + out['logits'],
                             rtol=1e-4, atol=1e-5)
  assert 'refined_logits' not in model.apply(variables, x, train=False)


def test_running_order_puts_readers_after_their_sources():
  model_config = tiny_model_config()
  assert models.running_order(model_config.heads) == ['decode_head', 'aux_head']
  models.set_head(model_config, 'a_refine', HEADS.config('linear', reads=(3,), reads_outputs=('aux_logits',),
                                                         train_only=True, outputs=('refined',)))
  assert models.running_order(model_config.heads) == ['decode_head', 'aux_head', 'a_refine']
  model_config.heads.aux_head.reads_outputs = ('refined',)
  with pytest.raises(ValueError, match='cycle'):
    models.running_order(model_config.heads)


# ------------------------------------------------------------------------------------------------- HRNetV2

def test_hrnet_v2_outputs_four_branches_at_strides_4_to_32():
  model = build_model(models.model_config(
      BACKBONES.config('hrnet', width=18),
      {'decode_head': HEADS.config('linear', reads=(0, 1, 2, 3), input_transform='resize_concat')}), 19)
  x = jax.ShapeDtypeStruct((2, 512, 1024, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init({'params': _key(0), 'dropout': _key(1)}, x, train=True), x)
  out, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': _key(2)},
                                                   mutable=['batch_stats']), variables, x)
  assert [f.shape for f in out['stage_features']] == [(2, 128, 256, 18), (2, 64, 128, 36), (2, 32, 64, 72),
                                                     (2, 16, 32, 144)]
  assert out['logits'].shape == (2, 128, 256, 19)
  assert variables['params']['decode_head']['conv_seg']['kernel'].shape == (1, 1, 270, 19)  # 18+36+72+144


def test_hrnet_fusion_sums_every_branch_into_every_branch():
  from ctxseg_jax.models.backbones.hrnet import FusionModule
  from ctxseg_jax.models.backbones.resnet import BasicBlock
  module = FusionModule(widths=(2, 4, 8), align_corners=True)
  shapes = [(1, 8, 6, 2), (1, 4, 3, 4), (1, 2, 2, 8)]
  branches = [jax.random.normal(_key(i), shape) for i, shape in enumerate(shapes)]
  variables = module.init({'params': _key(5)}, branches, train=False)
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(_key(6), v.shape), variables)  # no zero or one
  fused = module.apply(variables, branches, train=False)
  params, stats = variables['params'], variables['batch_stats']

  def blocks(i, x):
    for b in range(4):
      name = f'branch{i}_{b}'
      x = BasicBlock(2 * 2**i).apply({'params': params[name], 'batch_stats': stats[name]}, x, train=False)
    return x

  def conv_bn(name, x, stride):
    p, s = params[name], stats[name]
    kernel = p['conv']['kernel']
    pad = kernel.shape[0] // 2
    y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return (y - s['bn']['mean']) / jnp.sqrt(s['bn']['var'] + 1e-5) * p['bn']['scale'] + p['bn']['bias']

  b0, b1, b2 = (blocks(i, x) for i, x in enumerate(branches))
  up = lambda x, size: resize_bilinear(x, size, align_corners=True)  # noqa: E731
  expected = [
      b0 + up(conv_bn('fuse0_1', b1, 1), (8, 6)) + up(conv_bn('fuse0_2', b2, 1), (8, 6)),
      conv_bn('fuse1_0_0', b0, 2) + b1 + up(conv_bn('fuse1_2', b2, 1), (4, 3)),
      conv_bn('fuse2_0_1', jax.nn.relu(conv_bn('fuse2_0_0', b0, 2)), 2) + conv_bn('fuse2_1_0', b1, 2) + b2,
  ]
  for got, want in zip(fused, expected):
    np.testing.assert_allclose(got, jax.nn.relu(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('stride, use_bias, dtype, features', [(1, False, jnp.float32, 6), (2, True, jnp.float32, 6),
                                                              (1, True, jnp.bfloat16, 6), (1, False, jnp.float32, 3),
                                                              (2, True, jnp.bfloat16, 3)])
def test_pointwise_conv_as_a_matrix_product_equals_nn_conv(stride, use_bias, dtype, features):
  """layers.conv.Conv runs 1x1 kernels as dot_general: the same parameters, outputs and gradients as nn.Conv (odd
  sizes, so that the strided slice must keep the first of each pair, as the convolution does; more and fewer output
  than input channels, the two ways channel_matmul writes the weight gradient)."""
  from ctxseg_jax.models.layers.conv import Conv
  x = jax.random.normal(jax.random.key(0), (2, 7, 9, 5))
  settings = dict(features=features, kernel_size=(1, 1), strides=(stride, stride), padding=((0, 0), (0, 0)),
                  use_bias=use_bias, dtype=dtype, bias_init=nn.initializers.normal(1.0))
  ours, reference = Conv(**settings), nn.Conv(**settings)
  variables = reference.init(jax.random.key(1), x)
  assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(variables)

  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x).astype(jnp.float32)))

  tolerance = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  np.testing.assert_allclose(ours.apply(variables, x).astype(jnp.float32),
                             reference.apply(variables, x).astype(jnp.float32), rtol=tolerance, atol=tolerance)
  assert ours.apply(variables, x).dtype == reference.apply(variables, x).dtype
  got, expected = (jax.grad(loss(m), argnums=(0, 1))(variables, x) for m in (ours, reference))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)
