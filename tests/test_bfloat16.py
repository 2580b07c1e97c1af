"""model.dtype='bfloat16': convolutions and matrix products in bfloat16 over float32 parameters, with float32
BatchNorm statistics, softmax, attention, gates and losses, on the tiny FCN, EncNet, OCRNet and Contextrast models.

Shapes, dtypes and the operations of a step are checked abstractly (jax.eval_shape, jax.make_jaxpr); one tiny
EncNet train step runs.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ctxseg_jax import experiment, steps
from tests.jaxprs import equations
from tests.tiny_config import get_config, use_contextrast, use_encnet, use_ocrnet

VARIANTS = {'fcn': lambda config: config, 'encnet': use_encnet, 'ocrnet': use_ocrnet, 'contextrast': use_contextrast}
# Float32 by design in a bfloat16 model: EncNet's code statistics (BatchNorm over the Encoding layer's float32
# codes), its sigmoid gate's Linear and the SE branch's Linear, which read the float32 encoding.
FLOAT32_MODULES = ('decode_head/enc_module/encoding_norm', 'decode_head/enc_module/fc', 'decode_head/se_layer')
# Where rounding to bfloat16 would hurt: exponentials and logarithms (softmax, sigmoid, cross-entropy, the
# contrastive loss), BatchNorm's rsqrt, the normalisations' sqrt, and the maxima that stabilise softmax.
FLOAT32_PRIMITIVES = {'exp', 'exp2', 'log', 'log1p', 'logistic', 'tanh', 'rsqrt', 'sqrt', 'pow', 'reduce_max',
                      'erf', 'logsumexp'}
BATCH = 4  # a multiple of the tiny OCRNet's OHEM group


def _config(variant: str, dtype: str):
  config = VARIANTS[variant](get_config())
  config.model.dtype = dtype
  return config


def _experiment(variant: str, dtype: str) -> experiment.Experiment:
  return experiment.build(_config(variant, dtype), jax.devices()[:1])


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
          'label': rng.integers(0, 8, (BATCH, 32, 32), dtype=np.uint8)}


def _abstract_batch() -> dict[str, jax.ShapeDtypeStruct]:
  return {key: jax.ShapeDtypeStruct(value.shape, value.dtype) for key, value in _batch().items()}


def _float_dtypes(tree) -> set[str]:
  return {str(leaf.dtype) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


@pytest.mark.parametrize('variant', VARIANTS)
def test_state_is_that_of_float32(variant):
  """Same parameter, statistics and optimizer trees, shapes and dtypes (float32) as the float32 model: checkpoints
  are interchangeable between the two."""
  f32, bf16 = (_experiment(variant, dtype).abstract_state() for dtype in ('float32', 'bfloat16'))
  assert jax.tree.structure(f32) == jax.tree.structure(bf16)
  for a, b in zip(jax.tree.leaves(f32), jax.tree.leaves(bf16)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
  assert _float_dtypes(bf16.params) == _float_dtypes(bf16.batch_stats) == _float_dtypes(bf16.opt_state) == {'float32'}


@pytest.mark.parametrize('variant', VARIANTS)
def test_convolutions_and_batch_norms_compute_in_bfloat16(variant):
  exp = _experiment(variant, 'bfloat16')
  state = exp.abstract_state()
  images = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)
  seen = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and isinstance(context.module, (nn.Conv, nn.BatchNorm, nn.Dense)):
      seen.append(('/'.join(context.module.scope.path), out.dtype))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: exp.model.apply(v, x, train=True, rngs={'dropout': jax.random.key(0)},
                                                mutable=['batch_stats']),
                   {'params': state.params, 'batch_stats': state.batch_stats}, images)
  assert len(seen) > 20
  for path, dtype in seen:
    expected = jnp.float32 if path in FLOAT32_MODULES else jnp.bfloat16
    assert dtype == expected, f'{path} computes in {dtype}'


@pytest.mark.parametrize('variant', VARIANTS)
def test_softmax_statistics_and_losses_of_a_train_step_are_float32(variant):
  """No exponential, logarithm, square root or softmax maximum of the whole train step (forward, losses, backward,
  update) reads a bfloat16 value, while its convolutions do."""
  exp = _experiment(variant, 'bfloat16')
  step = functools.partial(steps.train_step, model=exp.model, optimizer=exp.optimizer, loss_fn=exp.loss_fn,
                           config=exp.config)
  jaxpr = jax.make_jaxpr(step)(exp.abstract_state(), _abstract_batch()).jaxpr
  reads_bf16 = lambda eq: any(getattr(v.aval, 'dtype', None) == jnp.bfloat16 for v in eq.invars)  # noqa: E731
  all_equations = list(equations(jaxpr))
  assert not [eq.primitive.name for eq in all_equations if eq.primitive.name in FLOAT32_PRIMITIVES and reads_bf16(eq)]
  convolutions = [eq for eq in all_equations if eq.primitive.name == 'conv_general_dilated']
  assert convolutions and all(reads_bf16(eq) for eq in convolutions)
  assert all(v.aval.dtype == jnp.float32 for v in jaxpr.outvars if jnp.issubdtype(v.aval.dtype, jnp.floating))


@pytest.mark.parametrize('variant', ['encnet', 'ocrnet'])
def test_bfloat16_logits_are_close_to_float32(variant):
  """The float32 model's parameters run in bfloat16: EncNet (the Encoding layer, the gate) and OCRNet (region
  gather, object attention). Contextrast's inference model is the FCN, whose plain convolutions the tests above
  cover."""
  f32, bf16 = _experiment(variant, 'float32'), _experiment(variant, 'bfloat16')
  state = f32.init_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  images = _batch()['image']
  logits = [exp.predict(variables, images) for exp in (f32, bf16)]
  assert logits[1].dtype == jnp.float32
  error = float(jnp.linalg.norm(logits[1] - logits[0]) / jnp.linalg.norm(logits[0]))
  assert error < 0.02, error  # bfloat16 keeps 8 bits of mantissa (~0.4% per rounding); measured 0.1-0.4%


def test_bfloat16_train_step_is_within_input_noise_of_float32():
  """One EncNet step from the same state: float32 loss, metrics, parameters and statistics, and a parameter update
  that differs from the float32 step's by less than the float32 update itself changes when each pixel moves by one
  grey level or none (at initialisation the step is that sensitive: a loose tolerance alone would say nothing)."""
  f32, bf16 = _experiment('encnet', 'float32'), _experiment('encnet', 'bfloat16')
  batch = _batch()
  noisy = dict(batch, image=np.clip(batch['image'] + np.random.default_rng(1).integers(-1, 2, batch['image'].shape),
                                    0, 255).astype(np.uint8))
  initial = f32.init_state()
  start, _ = ravel_pytree(initial.params)
  (state, metrics), (f32_state, f32_metrics), (noisy_state, _) = (
      exp.train_step(f32.init_state(), images) for exp, images in ((bf16, batch), (f32, batch), (f32, noisy)))
  assert all(value.dtype == jnp.float32 and bool(jnp.isfinite(value)) for value in metrics.values())
  assert _float_dtypes(state.params) == _float_dtypes(state.batch_stats) == {'float32'}
  moved = [float(jnp.abs(b - a).max()) for a, b in zip(jax.tree.leaves(initial.batch_stats),
                                                      jax.tree.leaves(state.batch_stats))]
  assert min(moved) > 0  # every running statistic was updated
  np.testing.assert_allclose(metrics['loss'], f32_metrics['loss'], rtol=0.02)
  update, f32_update, noisy_update = (ravel_pytree(s.params)[0] - start for s in (state, f32_state, noisy_state))
  bf16_error = float(jnp.linalg.norm(update - f32_update) / jnp.linalg.norm(f32_update))
  noise_error = float(jnp.linalg.norm(noisy_update - f32_update) / jnp.linalg.norm(f32_update))
  assert bf16_error < noise_error, (bf16_error, noise_error)
