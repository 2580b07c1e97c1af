"""bench/profile_step.py: compiled ops read from a real profiler trace, joined to the HLO and grouped."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bench import profile_step


def _conv_grad(x, w):
  def loss(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jnp.maximum(y, 0.0) ** 2)
  return jax.grad(loss, argnums=(0, 1))(x, w)


def test_breakdown_of_a_traced_conv_step(tmp_path):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 4), np.float32))
  w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 4, 8), np.float32))
  compiled = jax.jit(_conv_grad).lower(x, w).compile()
  jax.block_until_ready(compiled(x, w))
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    for _ in range(2):
      jax.block_until_ready(compiled(x, w))
  ops = profile_step.hlo_ops(compiled.as_text())
  assert any(op['opcode'] == 'convolution' for op in ops.values()), ops
  events = profile_step.read_trace(str(tmp_path))
  times = profile_step.op_times(events, ops, steps=2)
  assert times and all(seconds >= 0 for seconds in times.values())
  assert any(event.get('name') not in ops for event in events)  # the runtime's own events, left out
  groups = {profile_step.op_group(name, ops[name]) for name in times}
  assert 'conv/dot fwd' in groups and 'conv/dot bwd' in groups, groups
  text = profile_step.breakdown(times, ops, top=3)
  assert f'{len(times)} compiled ops' in text and 'conv/dot bwd' in text


def test_op_group_by_name_and_origin():
  backward = {'opcode': 'fusion', 'op_name': 'jit(f)/transpose(jvp(f))/mul', 'shape': 'f32[2]'}
  forward = {'opcode': 'fusion', 'op_name': 'jit(f)/jvp(f)/conv_general_dilated', 'shape': 'f32[2]'}
  assert profile_step.op_group('ynn_fusion.3', forward) == 'conv/dot fwd'
  assert profile_step.op_group('ynn_fusion.4', {'opcode': 'fusion', 'op_name': '', 'shape': ''}) == 'conv/dot bwd'
  assert profile_step.op_group('transpose_copy_fusion.1', forward) == 'transpose'
  assert profile_step.op_group('copy_bitcast_fusion', backward) == 'copy'
  assert profile_step.op_group('multiply_add_fusion.2', backward) == 'elementwise bwd'
  assert profile_step.op_group('wrapped_reduce-window.2', backward) == 'reduce'
