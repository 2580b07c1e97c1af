"""In-graph decoding: images (tf.io.decode_image: PNG, JPEG, BMP, GIF), labels and label maps.

Labels that are 8-bit grey or 8-bit palette PNGs are decoded in graph; a palette PNG is decoded as its indices,
by relabelling its header as grey and dropping its palette chunks. Other label files go through PIL
(tf.numpy_function). Raw values are mapped to training ids with the pair's LabelMap (tf.gather of its lookup
table); values outside the map's valid set and image/label size mismatches fail with a message naming the file.
JPEG decoding is libjpeg-turbo in both TF and PIL; its output can differ from PIL's by DCT/upsampling settings.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from ctxseg_jax.data.datasets import files
from ctxseg_jax.data.datasets.base import DatasetInfo
from ctxseg_jax.data.tfdata import checks

_PNG_SIGNATURE = np.frombuffer(b'\x89PNG\r\n\x1a\n', np.uint8)
# Chunks whose meaning depends on the palette colour type; a grey PNG must not carry them.
_PALETTE_CHUNKS = ('PLTE', 'tRNS', 'bKGD', 'hIST', 'sBIT')
_BYTES = [bytes([i]) for i in range(256)]


def _crc_table() -> np.ndarray:
  table = np.arange(256, dtype=np.int64)
  for _ in range(8):
    table = np.where(table & 1, (table >> 1) ^ 0xEDB88320, table >> 1)
  return table


_CRC_TABLE = _crc_table()


def _crc32(data: tf.Tensor) -> tf.Tensor:
  """The PNG (IEEE) CRC-32 of a short uint8 vector of static length."""
  table = tf.constant(_CRC_TABLE)
  crc = tf.constant(0xFFFFFFFF, tf.int64)
  values = tf.cast(data, tf.int64)
  for i in range(data.shape[0]):
    crc = tf.bitwise.bitwise_xor(tf.gather(table, tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(crc, values[i]), 255)),
                                 tf.bitwise.right_shift(crc, 8))
  return tf.bitwise.bitwise_xor(crc, 0xFFFFFFFF)


def _as_bytes(values: tf.Tensor) -> tf.Tensor:
  """int vector in 0..255 -> the scalar string of those bytes."""
  return tf.strings.reduce_join(tf.gather(tf.constant(_BYTES), values))


def _uint32_at(data: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
  raw = tf.io.decode_raw(tf.strings.substr(data, position, 4), tf.uint8, fixed_length=4)
  return tf.reduce_sum(tf.cast(raw, tf.int64) * tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64))


def _palette_png_as_grey(data: tf.Tensor) -> tf.Tensor:
  """An 8-bit palette PNG rewritten as an 8-bit grey PNG, whose decoded values are the palette indices.

  The IHDR colour type becomes 0 (its CRC recomputed) and the palette chunks, which all precede the first IDAT,
  are dropped; the image data is left as it is (8-bit palette and grey rows have the same layout).
  """
  ihdr = tf.io.decode_raw(tf.strings.substr(data, 12, 17), tf.uint8, fixed_length=17)  # 'IHDR' + 13 data bytes
  ihdr = tf.cast(ihdr, tf.int64) * tf.constant([1] * 13 + [0] + [1] * 3, tf.int64)  # byte 25: colour type -> 0
  crc = _crc32(ihdr)
  crc_bytes = tf.bitwise.bitwise_and(tf.bitwise.right_shift(crc, tf.constant([24, 16, 8, 0], tf.int64)), 255)
  head = tf.strings.join([tf.strings.substr(data, 0, 12), _as_bytes(ihdr), _as_bytes(crc_bytes)])
  size = tf.strings.length(data)
  dropped = tf.constant(_PALETTE_CHUNKS)

  def body(position, out):
    length = tf.cast(tf.minimum(_uint32_at(data, position), tf.cast(size, tf.int64)), tf.int32)
    kind = tf.strings.substr(data, position + 4, 4)
    image_data = tf.equal(kind, 'IDAT')
    chunk = tf.where(tf.reduce_any(tf.equal(kind, dropped)), '', tf.strings.substr(data, position, length + 12))
    piece = tf.where(image_data, tf.strings.substr(data, position, -1), chunk)
    return tf.where(image_data, size, position + length + 12), tf.strings.join([out, piece])

  _, out = tf.while_loop(lambda position, out: position < size, body, (tf.constant(33), head))
  return out


def _pil_label(data: bytes, where: bytes) -> np.ndarray:
  """uint8 (H, W) raw values of a label file that is not an 8-bit grey or palette PNG (decoded by PIL)."""
  data, where = (x.item() if isinstance(x, np.ndarray) else x for x in (data, where))
  where = where.decode(errors='replace')
  label = files.decode_bytes(data, where, 'the file is corrupt or truncated: re-create it')
  return files.label_values(label, where)


def decode_label(data: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
  """Raw values of an encoded label: uint8 (H, W).

  8-bit grey and 8-bit palette PNGs (their indices, not their colours) are decoded in graph; anything else by
  PIL through tf.numpy_function, which accepts mode L, P and 8-bit-valued I modes.

  Args:
    data: scalar string, the file's bytes.
    where: scalar string naming the file in error messages.
  """
  head = tf.io.decode_raw(tf.strings.substr(data, 0, 32), tf.uint8, fixed_length=32)
  png = tf.logical_and(tf.reduce_all(tf.equal(head[:8], _PNG_SIGNATURE)), tf.strings.length(data) > 33)
  depth8 = tf.logical_and(png, tf.equal(head[24], 8))
  grey = tf.logical_and(depth8, tf.equal(head[25], 0))
  palette = tf.logical_and(depth8, tf.equal(head[25], 3))

  def by_pil():
    return tf.ensure_shape(tf.numpy_function(_pil_label, [data, where], tf.uint8), [None, None])

  def in_graph():
    png_data = tf.cond(palette, lambda: _palette_png_as_grey(data), lambda: data)
    return tf.io.decode_png(png_data, channels=1)[..., 0]

  return tf.cond(tf.logical_or(grey, palette), in_graph, by_pil)


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """uint8 (H, W, 3) RGB pixels of an encoded image (PNG, JPEG, BMP, GIF)."""
  image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
  return tf.ensure_shape(image, [None, None, 3])


@dataclasses.dataclass(frozen=True)
class LabelMaps:
  """The LabelMaps of a source as stacked tables: lut uint8 (M, 256), valid bool (M, 256), descriptions (M,)."""
  lut: np.ndarray
  valid: np.ndarray
  descriptions: tuple[str, ...]
  info: DatasetInfo

  @classmethod
  def of(cls, maps: list[files.LabelMap], info: DatasetInfo) -> LabelMaps:
    return cls(np.stack([m.lut for m in maps]), np.stack([m.valid for m in maps]),
               tuple(m.description for m in maps), info)

  @property
  def identity(self) -> bool:
    return all(np.array_equal(lut[valid], np.flatnonzero(valid)) for lut, valid in zip(self.lut, self.valid))

  def apply(self, raw: tf.Tensor, map_id: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
    """Maps uint8 (H, W) raw values to training ids; fails naming `where` and the bad values when invalid."""
    raw = tf.cast(raw, tf.int32)
    valid = tf.gather(tf.constant(self.valid), map_id)
    present = tf.math.bincount(raw, minlength=256, maxlength=256) > 0
    bad = tf.logical_and(present, tf.logical_not(valid))
    info = self.info

    def message():
      values = tf.strings.reduce_join(checks.as_string(tf.where(bad)[:10, 0]), separator=', ')
      return tf.strings.join([
          where, ': label values [', values, '] are not valid raw labels of ', info.name, ' (valid: ',
          tf.gather(tf.constant(self.descriptions), map_id),
          f'; they become training ids 0..{info.num_classes - 1} and ignore {info.ignore_index}). The file is '
          'corrupt or from another dataset or converter: re-create it.'])

    with tf.control_dependencies([checks.check(tf.logical_not(tf.reduce_any(bad)), message)]):
      if self.identity:  # every valid value is its own training id: nothing to look up
        return tf.cast(raw, tf.uint8)
      return tf.gather(tf.gather(tf.constant(self.lut), map_id), raw)


def decode_pair(image_data: tf.Tensor, label_data: tf.Tensor, image_where: tf.Tensor, label_where: tf.Tensor,
                 maps: LabelMaps, map_id: tf.Tensor | int) -> tuple[tf.Tensor, tf.Tensor]:
  """Decodes an image and its label, checks that their sizes agree, maps the label to training ids."""
  image = decode_image(image_data)
  raw = decode_label(label_data, label_where)
  image_hw, label_hw = tf.shape(image)[:2], tf.shape(raw)

  def message():
    return tf.strings.join([
        image_where, ' is ', checks.as_string(image_hw[1]), 'x', checks.as_string(image_hw[0]),
        ' (WxH) but its label ', label_where, ' is ', checks.as_string(label_hw[1]), 'x',
        checks.as_string(label_hw[0]), '; they must be the same size (re-create the label, or remove both files)'])

  with tf.control_dependencies([checks.check(tf.reduce_all(tf.equal(image_hw, label_hw)), message)]):
    return tf.identity(image), maps.apply(raw, map_id, label_where)
