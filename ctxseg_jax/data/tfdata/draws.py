"""Stateless random draws: every random value of the train stream comes from a key folded from the seed, a salt
and the sample's stream position, so that it does not depend on threads or on where the stream was resumed."""
from __future__ import annotations

import tensorflow as tf

# Salts that separate the stateless random streams.
ORDER, AUGMENT = 1, 2
RATIO, TOP, LEFT, FLIP = 1, 2, 3, 4
BRIGHTNESS_ON, BRIGHTNESS, CONTRAST_FIRST, CONTRAST_ON, CONTRAST = 10, 11, 12, 13, 14
SATURATION_ON, SATURATION, HUE_ON, HUE = 15, 16, 17, 18


def root_key(seed: int, salt: int) -> tf.Tensor:
  """int64 (2,): the key of the stream `salt` of `seed`."""
  return tf.constant([seed, salt], tf.int64)


def fold(key: tf.Tensor, data) -> tf.Tensor:
  """int64 (2,): `key` specialised to the integer `data` (a process index, a stream position, a salt)."""
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def uniform(key: tf.Tensor, salt: int, low=0.0, high=1.0, dtype=tf.float32, shape=()) -> tf.Tensor:
  """Values of `shape` uniform in [low, high) from the stream `salt` of `key`."""
  return tf.random.stateless_uniform(shape, seed=fold(key, salt), minval=low, maxval=high, dtype=dtype)


def coin(key: tf.Tensor, salt: int) -> tf.Tensor:
  """A bool scalar, True with probability 0.5."""
  return uniform(key, salt) < 0.5
