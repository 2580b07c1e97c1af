"""A procedurally generated image-classification set whose class depends on global context.

Each image is a scene of the segmentation demo's generator (synthetic_context.py): ground texture with a thin band
of water ('sea') or road ('city') along the bottom, and objects scattered over it (an object may hide part of the
band). One or two objects are of one kind, a vehicle or a marker, and up to three persons come as distractors. The
class is the kind in its scene:

    vehicle at sea -> boat    vehicle in the city -> car    marker at sea -> buoy    marker in the city -> sign

Boat and car (and buoy and sign) are drawn by the same function from the same appearance distribution, so the
objects alone say nothing about the class: only the band, possibly far from them, does. Classes are balanced in
expectation: the class of a sample is drawn uniformly from (seed, split, index), like everything else in it.
"""
from __future__ import annotations

import numpy as np

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import synthetic_context as scenes

# (the object class drawn, the scene) of each class; the object's kind is scenes.KIND_OF[object class].
CLASSES = ((scenes.BOAT, 'sea'), (scenes.CAR, 'city'), (scenes.BUOY, 'sea'), (scenes.SIGN, 'city'))
CLASS_NAMES = tuple(scenes.CLASS_NAMES[object_class] for object_class, _ in CLASSES)
_NUM_OBJECTS = (1, 2)    # of the class's kind, inclusive
_NUM_PERSONS = (0, 3)    # distractors, inclusive
_BAND_FRACTION = (0.08, 0.16)  # of the image height: a thinner band than the segmentation scenes'

SYNTHETIC_CLASSIFICATION_INFO = base.DatasetInfo(
    name='synthetic_classification', class_names=CLASS_NAMES,
    palette=tuple(scenes.SYNTHETIC_CONTEXT_INFO.palette[object_class] for object_class, _ in CLASSES),
    task='classification')


def render_classification_sample(key: tuple[int, ...], image_size: int) -> tuple[np.ndarray, int]:
  """One sample from the non-negative integers `key`: image uint8 (S, S, 3) and its class id (index into
  CLASS_NAMES)."""
  class_rng, ground_rng, layout_rng, band_rng, finish_rng = scenes.random_streams(key)
  class_id = int(class_rng.integers(len(CLASSES)))
  object_class, scene = CLASSES[class_id]
  image, label = scenes.render_backdrop(ground_rng, layout_rng, band_rng, image_size, scene, _BAND_FRACTION)
  for _ in range(layout_rng.integers(_NUM_OBJECTS[0], _NUM_OBJECTS[1] + 1)):
    scenes.place_object(image, label, object_class, layout_rng)
  for _ in range(layout_rng.integers(_NUM_PERSONS[0], _NUM_PERSONS[1] + 1)):
    scenes.place_object(image, label, scenes.PERSON, layout_rng)
  return scenes.finish_image(finish_rng, image), class_id


class SyntheticClassificationSource(scenes.SyntheticContextSource):
  """`num_samples` classification samples of one split, each generated on access from (seed, split, index)."""
  info = SYNTHETIC_CLASSIFICATION_INFO

  def __getitem__(self, index: int) -> dict:
    """Returns {'image': uint8 (S, S, 3), 'label': int32 () class id, 'name': str}."""
    image, class_id = render_classification_sample(self._key(index), self.image_size)
    return {'image': image, 'label': np.int32(class_id), 'name': self.sample_name(index)}
