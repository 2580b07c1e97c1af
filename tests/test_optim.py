import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ctxseg_jax import optim


def _config(**overrides):
  values = dict(schedule='poly', lr=0.01, momentum=0.9, weight_decay=5e-4, poly_power=0.9, end_lr=0.0, warmup_steps=0,
                warmup_ratio=0.1, lr_mults=(('^(?!backbone/)', 10.0),))
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def test_poly_schedule_matches_formula():
  schedule = optim.lr_schedule(_config(end_lr=1e-4), 100)
  for t in (0, 1, 50, 99, 100):
    expected = (0.01 - 1e-4) * (1 - t / 100) ** 0.9 + 1e-4
    np.testing.assert_allclose(float(schedule(t)), expected, rtol=1e-6)


def test_cosine_schedule_matches_pytorch_encoding():
  """PyTorch-Encoding's LR_Scheduler('cos'): 0.5 * lr * (1 + cos(pi * T / N)), T the iteration."""
  schedule = optim.lr_schedule(_config(schedule='cosine', lr=0.1), 390)
  for t in (0, 1, 195, 389, 390):
    np.testing.assert_allclose(float(schedule(t)), 0.5 * 0.1 * (1 + np.cos(np.pi * t / 390)), rtol=1e-5, atol=1e-9)


def test_warmup_rises_linearly_then_joins_poly():
  schedule = optim.lr_schedule(_config(warmup_steps=10, warmup_ratio=0.1), 100)
  poly = lambda t: 0.01 * (1 - t / 100) ** 0.9
  np.testing.assert_allclose(float(schedule(0)), 0.1 * poly(0), rtol=1e-6)
  np.testing.assert_allclose(float(schedule(5)), (0.1 + 0.9 * 0.5) * poly(5), rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), poly(10), rtol=1e-6)


def test_sgd_matches_pytorch_semantics_with_head_multiplier():
  """PyTorch SGD: g += wd * w; b = m * b + g; w -= lr_t * b (heads: 10 * lr_t)."""
  params = {'backbone': {'w': jnp.array([1.0, -2.0])}, 'decode_head': {'w': jnp.array([0.5])}}
  config = _config()
  tx = optim.make_optimizer(config, total_steps=10)
  state = tx.init(params)
  schedule = optim.lr_schedule(config, 10)
  rng = np.random.default_rng(0)
  ref = {k: np.asarray(v['w'], np.float64) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in ref.items()}
  for t in range(3):
    grads = {k: {'w': jnp.asarray(rng.normal(size=v.shape), jnp.float32)} for k, v in ref.items()}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for k in ref:
      g = np.asarray(grads[k]['w'], np.float64) + config.weight_decay * ref[k]
      buf[k] = config.momentum * buf[k] + g
      mult = 1.0 if k == 'backbone' else 10.0
      ref[k] = ref[k] - mult * float(schedule(t)) * buf[k]
  for k in ref:
    np.testing.assert_allclose(np.asarray(params[k]['w']), ref[k], rtol=1e-5)


def test_lr_multipliers_follow_the_first_matching_pattern():
  tree = {'backbone': {'a': 1}, 'decode_head': {'cls': {'b': 2}, 'ocr': {'c': 3}}, 'aux_head': {'d': 4}}
  paths = jax.tree_util.tree_map_with_path(lambda p, _: optim.param_path(p), tree)
  assert paths['decode_head']['cls'] == {'b': 'decode_head/cls/b'}
  heads_at_10 = (('^(?!backbone/)', 10.0),)
  mults = jax.tree.map(lambda path: optim.lr_multiplier(path, heads_at_10), paths)
  assert mults == {'backbone': {'a': 1.0}, 'decode_head': {'cls': {'b': 10.0}, 'ocr': {'c': 10.0}},
                   'aux_head': {'d': 10.0}}
  # HRNet-OCR: parameters whose names hold cls, aux or ocr at 10x; the first match wins.
  hrnet_ocr = (('ocr', 2.0), ('cls|aux|ocr', 10.0))
  mults = jax.tree.map(lambda path: optim.lr_multiplier(path, hrnet_ocr), paths)
  assert mults == {'backbone': {'a': 1.0}, 'decode_head': {'cls': {'b': 10.0}, 'ocr': {'c': 2.0}},
                   'aux_head': {'d': 10.0}}


def test_parameters_of_one_multiplier_share_a_group():
  params = {'backbone': {'w': jnp.ones(2)}, 'decode_head': {'w': jnp.ones(1)}, 'aux_head': {'w': jnp.ones(1)}}
  state = optim.make_optimizer(_config(), total_steps=10).init(params)
  assert set(state.inner_states) == {'lr_x1.0', 'lr_x10.0'}
