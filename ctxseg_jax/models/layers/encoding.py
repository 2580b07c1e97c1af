"""The EncNet Encoding layer: residual encoding against learned codewords with per-code smoothing factors.

For features x in R^{B x N x D}, codewords C in R^{K x D} and scales s in R^K:

  SL[b, i, k] = s_k * ||x[b, i] - C[k]||^2        (no minus sign: s is negative at init)
  A = softmax over k of SL                          (B, N, K)
  E[b, k] = sum_i A[b, i, k] * (x[b, i] - C[k])     (B, K, D)

The references build the (B, N, K, D) residual tensor. Here distances come from the expansion
||x||^2 - 2 x.c + ||c||^2 and the aggregation from A^T x - (sum_i A) C, so the forward and backward passes are
five matmuls over (B, N, D), (B, N, K) and (B, K, D) operands and nothing larger is ever formed.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax.models.layers.linear import uniform

Dtype = Any

_HIGHEST = jax.lax.Precision.HIGHEST
_REF_STRIDE = 8


def encode(x: jax.Array, codewords: jax.Array, scale: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Residual encoding of `x` against `codewords`, computed as matmuls.

  Args:
    x: (B, N, D) features, any float dtype.
    codewords: (K, D) codewords.
    scale: (K,) smoothing factors (negative at init).
    mask: optional bool (B, N): only these positions are aggregated (the image's own region of a padded input,
      layers.valid_region); their assignments are unchanged, since each is a softmax over codes at one position.

  Returns:
    E: (B, K, D) float32 aggregated residuals. Gradients flow to all three inputs (reverse mode only), the one for
    `x` in the dtype of `x`.

  Everything runs in float32 with full-precision matmuls, whatever the dtype of `x`. The expanded distance
  ||x||^2 - 2 x.c + ||c||^2 cancels catastrophically when ||x|| is large next to ||x - c||, so x and the codewords
  are first shifted by a per-image reference point, a mean of x over (a strided subset of) N. Distances and
  residuals do not change under a common shift, so values and gradients are those of the unshifted definition.
  With a mask (evaluation), the masked forward pass is differentiated by autodiff.
  """
  x, codewords, scale = x.astype(jnp.float32), codewords.astype(jnp.float32), scale.astype(jnp.float32)
  if mask is None:
    return _encode(x, codewords, scale)
  return _encode_fwd(x, codewords, scale, mask)[0]


@jax.custom_vjp
def _encode(x: jax.Array, codewords: jax.Array, scale: jax.Array) -> jax.Array:
  return _encode_fwd(x, codewords, scale)[0]


def _encode_fwd(x, codewords, scale, mask=None):
  """Float32 forward pass; also returns what the backward pass needs (of the unmasked form)."""
  # Any point near the data serves as reference: the mean of every _REF_STRIDE-th position is as good as the full
  # mean and saves a pass over x.
  ref = jnp.mean(x[:, ::_REF_STRIDE], axis=1, keepdims=True)  # (B, 1, D)
  xs = x - ref  # (B, N, D)
  cs = codewords[None] - ref  # (B, K, D)

  cross = jnp.einsum('bnd,bkd->bnk', xs, cs, precision=_HIGHEST)  # (B, N, K)
  dist = jnp.sum(xs * xs, axis=-1)[:, :, None] - 2.0 * cross + jnp.sum(cs * cs, axis=-1)[:, None, :]
  dist = jnp.maximum(dist, 0.0)  # rounding can leave a tiny negative where x sits on a codeword
  assign = jax.nn.softmax(scale * dist, axis=-1)  # (B, N, K)
  if mask is not None:
    assign = jnp.where(mask[:, :, None], assign, 0.0)
  mass = jnp.sum(assign, axis=1)  # (B, K)

  encoded = jnp.einsum('bnk,bnd->bkd', assign, xs, precision=_HIGHEST) - mass[:, :, None] * cs
  return encoded, (xs, cs, assign, mass, dist, scale)


def _encode_bwd(residuals, grad):
  """Gradients w.r.t. (x, codewords, scale) from grad = dL/dE, (B, K, D).

  The reference point is treated as a constant: the function does not depend on it. The clamp of the distances
  at zero is a rounding guard, so the gradient is that of the exact distance. Autodiff of the forward pass
  would give the same values but splits the backward into more matmuls and passes over (B, N, D) arrays.
  """
  xs, cs, assign, mass, dist, scale = residuals
  # E = A^T xs - mass * cs.
  d_assign = (jnp.einsum('bnd,bkd->bnk', xs, grad, precision=_HIGHEST)
              - jnp.sum(grad * cs, axis=-1)[:, None, :])  # (B, N, K)
  d_logits = assign * (d_assign - jnp.sum(assign * d_assign, axis=-1, keepdims=True))
  d_scale = jnp.sum(d_logits * dist, axis=(0, 1))
  d_dist = d_logits * scale  # (B, N, K)
  # dist = ||xs||^2 - 2 xs.cs + ||cs||^2; both matmuls that yield (B, N, D) go into one with 2K contractions.
  d_xs = (jnp.einsum('bnj,bjd->bnd', jnp.concatenate([assign, -2.0 * d_dist], axis=-1),
                     jnp.concatenate([grad, cs], axis=1), precision=_HIGHEST)
          + 2.0 * jnp.sum(d_dist, axis=-1)[:, :, None] * xs)
  d_cs = (2.0 * jnp.sum(d_dist, axis=1)[:, :, None] * cs - mass[:, :, None] * grad
          - 2.0 * jnp.einsum('bnk,bnd->bkd', d_dist, xs, precision=_HIGHEST))
  return d_xs, jnp.sum(d_cs, axis=0), d_scale


_encode.defvjp(_encode_fwd, _encode_bwd)


# EncDrop's smoothing factors at inference: the mean of their training distribution U(-1, 0).
DROP_SCALE_MEAN = -0.5


class Encoding(nn.Module):
  """Encoding layer with `num_codes` codewords; float32 parameters initialised as in the references.

  Attributes:
    num_codes: K, the number of codewords.
    scale_drop: PyTorch-Encoding's EncodingDrop (the 3.45% CIFAR-10 network): the smoothing factors are not learned
      but drawn from U(-1, 0) for every training step (one draw per step, from the 'dropout' rng) and fixed at their
      mean -0.5 at inference. The 'scale' parameter is still declared, as EncodingDrop declares it (and overwrites
      it on every call), so parameter counts and layouts stay those of the reference.
    dtype: dtype the features are cast to on entry (the model's compute dtype). The encoding itself always
      runs in float32 (see `encode`).
  """
  num_codes: int
  scale_drop: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    """(B, H, W, D) -> (B, num_codes, D) float32; with bool (B, H, W) `mask`, aggregated over those positions.
    `train` matters only with scale_drop (it then needs the 'dropout' rng)."""
    b, h, w, d = x.shape
    bound = 1.0 / math.sqrt(self.num_codes * d)
    codewords = self.param('codewords', uniform(-bound, bound), (self.num_codes, d), jnp.float32)
    scale = self.param('scale', uniform(-1.0, 0.0), (self.num_codes,), jnp.float32)
    if self.scale_drop:
      scale = (jax.random.uniform(self.make_rng('dropout'), (self.num_codes,), jnp.float32, -1.0, 0.0) if train
               else jnp.full((self.num_codes,), DROP_SCALE_MEAN, jnp.float32))
    flat_mask = None if mask is None else mask.reshape(b, h * w)
    return encode(x.astype(self.dtype).reshape(b, h * w, d), codewords, scale, flat_mask)

