"""Failures inside the graph that carry their own message: a check's text travels between markers in TensorFlow's
error, and `marked` takes it back out so that the iterators can raise it as a DataError."""
from __future__ import annotations

import re
from typing import Callable

import tensorflow as tf

_MARK_START, _MARK_END = '<data-error>', '</data-error>'
_MARKED = re.compile(re.escape(_MARK_START) + '(.*?)' + re.escape(_MARK_END), re.S)


def check(ok: tf.Tensor, message: Callable[[], tf.Tensor]) -> tf.Tensor:
  """A bool op that fails with `message()` (a scalar string, built only on failure) unless `ok`."""
  def fail():
    assertion = tf.debugging.Assert(tf.constant(False), [tf.strings.join([_MARK_START, message(), _MARK_END])])
    with tf.control_dependencies([assertion]):
      return tf.constant(False)
  return tf.cond(ok, lambda: tf.constant(True), fail)


def as_string(value: tf.Tensor) -> tf.Tensor:
  """A numeric tensor's decimal text, for check messages."""
  return tf.strings.as_string(value)


def marked(message: str) -> str | None:
  """The message of the failed `check` inside TensorFlow's error `message`, or None when none failed."""
  found = _MARKED.search(message)
  return found.group(1) if found else None
