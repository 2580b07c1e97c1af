"""A dataset stored as image and label files in one folder (local or gs://):

    root/dataset.json               {"name": ..., "class_names": [...], "palette": [[r, g, b], ...],
                                     "ignore_index": 255}
    root/images/<split>/<stem>.png  (or .jpg / .jpeg) RGB images
    root/labels/<split>/<stem>.png  single-channel training ids (PNG mode L or P, read as raw indices)

`python -m ctxseg_jax.data.export` writes this layout from any configured dataset. Construction only lists
files; decoding happens per sample in `__getitem__`, and every problem raises a DataError naming the file.
Label values must be class ids or the ignore index of dataset.json.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from etils import epath

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import files

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
LABEL_SUFFIX = '.png'
INFO_FILE = 'dataset.json'
INFO_KEYS = ('name', 'class_names', 'palette', 'ignore_index')

LAYOUT = f"""\
  <root>/{INFO_FILE}                 {{"name": ..., "class_names": [...], "palette": [[r, g, b], ...],
                                     "ignore_index": 255}}
  <root>/images/<split>/<stem>.png   (or .jpg / .jpeg) RGB images
  <root>/labels/<split>/<stem>.png   single-channel class ids (PNG mode L or P), ignore_index elsewhere
Write one from a configured dataset with: python -m ctxseg_jax.data.export --config <config.py> --out <root>"""


def _info_error(path: epath.Path, problem: str) -> base.DataError:
  return base.DataError(f'{path}: {problem}. Expected {INFO_FILE} of the form\n'
                        '  {"name": "my_data", "class_names": ["background", "cat"], '
                        '"palette": [[0, 0, 0], [255, 0, 0]], "ignore_index": 255}')


def parse_info(raw: Any, path: epath.Path) -> base.DatasetInfo:
  if not isinstance(raw, dict):
    raise _info_error(path, f'must hold a JSON object, got {type(raw).__name__}')
  unknown = sorted(set(raw) - set(INFO_KEYS))
  if unknown:
    raise _info_error(path, f'unknown keys {unknown}; the keys are {list(INFO_KEYS)}')
  missing = [k for k in ('name', 'class_names', 'palette') if k not in raw]
  if missing:
    raise _info_error(path, f'missing keys {missing}')
  name, names, palette = raw['name'], raw['class_names'], raw['palette']
  ignore_index = raw.get('ignore_index', 255)
  if not isinstance(name, str) or not name:
    raise _info_error(path, f'"name" must be a non-empty string, got {name!r}')
  if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
    raise _info_error(path, '"class_names" must be a non-empty list of strings')
  if not (isinstance(palette, list) and all(
      isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
      for c in palette)):
    raise _info_error(path, '"palette" must be a list of [r, g, b] integer triples in 0..255')
  if len(palette) != len(names):
    raise _info_error(path, f'{len(names)} class_names but {len(palette)} palette colours; give one per class')
  if not isinstance(ignore_index, int) or not 0 <= ignore_index <= 255:
    raise _info_error(path, f'"ignore_index" must be an integer in 0..255 (labels are 8-bit), got {ignore_index!r}')
  if ignore_index < len(names):
    raise _info_error(path, f'"ignore_index" {ignore_index} collides with class id {ignore_index} '
                            f'({names[ignore_index]!r}); class ids are 0..{len(names) - 1}')
  return base.DatasetInfo(name=name, class_names=tuple(names), palette=tuple(tuple(c) for c in palette),
                          ignore_index=ignore_index)


def _check_root(root: epath.Path) -> None:
  if not root.is_dir():
    raise base.DataError(f'dataset root {root} does not exist or is not a folder. Expected the layout\n{LAYOUT}')


def folder_info(root: str | epath.PathLike) -> base.DatasetInfo:
  """The dataset's metadata as training sees it: dataset.json's, with the ignore index 255 (the input pipeline
  pads and ignores with 255; a different declared ignore value is mapped to 255 while reading)."""
  return dataclasses.replace(declared_info(root), ignore_index=base.IGNORE_INDEX)


def declared_info(root: str | epath.PathLike) -> base.DatasetInfo:
  """Reads `root/dataset.json` as written (no images are read)."""
  root = epath.Path(root)
  _check_root(root)
  path = root / INFO_FILE
  if not path.exists():
    raise base.DataError(f'{path} is missing; every dataset folder needs one. Expected the layout\n{LAYOUT}')
  try:
    raw = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise _info_error(path, f'is not valid JSON ({e})') from e
  return parse_info(raw, path)


def _stem(name: str) -> str:
  dot = name.rfind('.')
  return name[:dot] if dot > 0 else name


def list_pairs(image_dir: epath.Path, label_dir: epath.Path) -> tuple[list[files.Pair], list[str]]:
  """Pairs images/<split>/<stem>.{png,jpg,jpeg} with labels/<split>/<stem>.png.

  Returns (sorted pairs, problems): each unpaired file, two images with one stem and JPEG labels are problems.
  """
  problems, images = [], {}
  for name, path in sorted(files.files_with_suffix(image_dir, IMAGE_SUFFIXES).items()):
    stem = _stem(name)
    if stem in images:
      problems.append(f'{images[stem]} and {path} share the stem {stem!r}; keep one image per stem')
      continue
    images[stem] = path
  labels = {}
  for name, path in sorted(files.files_with_suffix(label_dir, IMAGE_SUFFIXES).items()):
    if not name.lower().endswith(LABEL_SUFFIX):
      problems.append(f'{path}: labels must be lossless PNG files (JPEG compression changes class ids); save it '
                      f'as {label_dir / (_stem(name) + LABEL_SUFFIX)}')
      continue
    labels[_stem(name)] = path
  matched, unpaired = files.match_by_key(
      images, labels, expected_label=lambda stem: str(label_dir / (stem + LABEL_SUFFIX)),
      expected_image=lambda stem: str(image_dir / stem) + '{' + ','.join(IMAGE_SUFFIXES) + '}')
  return [files.Pair(image, label, 'identity') for _, image, label in matched], problems + unpaired


class FolderSource(files.FilePairSource):
  """One split of a dataset folder; samples are named by their image path."""

  def __init__(self, root: str | epath.PathLike, split: str):
    root = epath.Path(root)
    _check_root(root)
    declared = declared_info(root)
    image_dir, label_dir = root / 'images' / split, root / 'labels' / split
    for folder in (image_dir, label_dir):
      if not folder.is_dir():
        found = sorted(p.name for p in (root / 'images').iterdir()) if (root / 'images').is_dir() else []
        raise base.DataError(f'{folder} is missing: no split {split!r} in {root} (splits found under images/: '
                             f'{found}). Expected the layout\n{LAYOUT}')
    pairs, problems = list_pairs(image_dir, label_dir)
    if not pairs and not problems:
      raise base.DataError(f'{image_dir} holds no images ({", ".join(IMAGE_SUFFIXES)}). Expected the layout\n'
                           f'{LAYOUT}')
    classes = {i: i for i in range(declared.num_classes)}
    label_map = files.LabelMap.from_dict(
        {**classes, declared.ignore_index: base.IGNORE_INDEX},
        f'0..{declared.num_classes - 1} and {declared.ignore_index} (the ignore_index of {INFO_FILE})')
    super().__init__(folder_info(root), split, pairs, {'identity': label_map}, problems=problems, root=str(root))
