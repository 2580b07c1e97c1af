"""The training loss: a list of weighted terms over the model's named outputs, built from config.loss.

config.loss.terms maps a term's name to a TERMS config (chosen by its `type`): the output it reads, its weight
and the step from which the weight applies, plus the term type's own settings. Each term is a function
(outputs, batch, step, key) -> (value, scalars); the total is the sum of weight * value in term-name order. Terms are
logged as 'loss_<name>' (weighted) and their scalars as '<name>/<scalar>'.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from ctxseg_jax import settings
from ctxseg_jax.losses import contextrast, cross_entropy, se_loss
from ctxseg_jax.settings import Registry, Setting

Outputs = dict[str, jax.Array]
Batch = dict[str, jax.Array]
LossFn = Callable[[Outputs, Batch, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

WEIGHTING = {
    'output': Setting('logits', 'the model output the term reads'),
    'weight': Setting(1.0, 'multiplier of the term in the total; 0 leaves the term out',
                      rule=settings.NON_NEGATIVE),
    'start_step': Setting(0, 'the term counts (and is computed) from this step on (ContrastiveSeg starts its '
                          'contrast term at 5000)', rule=settings.NON_NEGATIVE),
}

TERMS = Registry('loss term', 'type', {
    'cross_entropy': cross_entropy.COMPONENT,
    'se': se_loss.COMPONENT,
    'contextrast': contextrast.COMPONENT,
}, common=WEIGHTING)


def loss_config(**terms: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.loss from {term name: TERMS.config(...)}."""
  config = ml_collections.ConfigDict()
  config.terms = ml_collections.ConfigDict(terms)
  return config


def set_term(loss: ml_collections.ConfigDict, name: str, term: ml_collections.ConfigDict | None) -> None:
  """Adds or replaces (a TERMS.config(...)) or removes (None) the term `name` of config.loss."""
  settings.set_entry(loss.terms, name, term)


def problems(loss: ml_collections.ConfigDict, train_outputs: list[str] | None, num_classes: int | None = None,
             prefix: str = 'loss') -> list[str]:
  """Every problem of config.loss, given the names of the outputs the model publishes in training and the number
  of classes (None: not known, e.g. because the model config has problems of its own; then not checked)."""
  errors = []
  for name, term in loss.terms.items():
    key = f'config.{prefix}.terms.{name}'
    term_errors = TERMS.problems(f'{prefix}.terms.{name}', term)
    if not term_errors and term.weight > 0 and train_outputs is not None:
      missing = [(setting, output) for setting, output in TERMS[term.type].reads(term).items()
                 if output not in train_outputs]
      if missing:  # the first one: the others are named once it is fixed
        setting, output = missing[0]
        term_errors.append(f'{key}.{setting}={output!r} is not an output of the model; its outputs in training '
                           f'are {train_outputs} (or set {key}.weight=0 to leave the term out)')
    class_weight = term.get('class_weight', ())
    if not term_errors and num_classes is not None and class_weight and len(class_weight) != num_classes:
      term_errors.append(f'{key}.class_weight has {len(class_weight)} entries; the dataset has {num_classes} '
                         'classes')
    errors += term_errors
  if not any(term.weight > 0 for term in loss.terms.values()):
    errors.append(f'config.{prefix}.terms: no term has a weight > 0, so there is nothing to train '
                  f'(terms: {list(loss.terms)})')
  return errors


def make_loss(loss: ml_collections.ConfigDict, *, ignore_index: int) -> LossFn:
  """The loss function of config.loss.

  The returned function maps (outputs, batch, step, key) to (total, logs):
    outputs: the model's named outputs in training.
    batch: {'image': float32 (B, H, W, 3) normalised, 'label': int32 (B, H, W)}.
    step: int32 scalar, the step being taken (0-based); key: a PRNG key for this step.
  logs holds 'loss_<name>' (the weighted value) for every term with a positive weight, and '<name>/<scalar>' for
  the scalars a term reports.
  """
  terms = [(index, name, term, TERMS[term.type].build(term, ignore_index=ignore_index))
           for index, (name, term) in enumerate(loss.terms.items()) if term.weight > 0]

  def loss_fn(outputs: Outputs, batch: Batch, step: jax.Array, key: jax.Array):
    logs = {}
    for index, name, term, fn in terms:
      evaluate = functools.partial(fn, outputs, batch, step, jax.random.fold_in(key, index))
      if term.start_step > 0:
        # Before its start step the term is not computed at all (lax.cond runs one branch), so neither its value
        # nor its gradient can turn the total non-finite.
        zeros = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(evaluate))  # noqa: E731
        value, scalars = jax.lax.cond(step >= term.start_step, evaluate, zeros)
      else:
        value, scalars = evaluate()
      logs[f'loss_{name}'] = term.weight * value
      logs.update({f'{name}/{k}': v for k, v in scalars.items()})
    total = sum(logs[f'loss_{name}'] for _, name, _, _ in terms)
    return total, logs

  return loss_fn
