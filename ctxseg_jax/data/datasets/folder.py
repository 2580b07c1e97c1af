"""A dataset stored as image and label files in one folder (local or gs://):

    root/dataset.json               {"name": ..., "class_names": [...], "palette": [[r, g, b], ...],
                                     "ignore_index": 255}
    root/images/<split>/<stem>.png  (or .jpg / .jpeg) RGB images
    root/labels/<split>/<stem>.png  single-channel training ids (PNG mode L or P, read as raw indices)

`python -m ctxseg_jax.data.export` writes this layout from any configured dataset. Construction only lists
files; decoding happens per sample in `__getitem__`, and every problem raises a DataError naming the file.
"""
from __future__ import annotations

import io
import json
from typing import Any

from etils import epath
import numpy as np
from PIL import Image

from ctxseg_jax.data.datasets import base

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
LABEL_SUFFIX = '.png'
INFO_FILE = 'dataset.json'
_INFO_KEYS = ('name', 'class_names', 'palette', 'ignore_index')

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


def _parse_info(raw: Any, path: epath.Path) -> base.DatasetInfo:
  if not isinstance(raw, dict):
    raise _info_error(path, f'must hold a JSON object, got {type(raw).__name__}')
  unknown = sorted(set(raw) - set(_INFO_KEYS))
  if unknown:
    raise _info_error(path, f'unknown keys {unknown}; the keys are {list(_INFO_KEYS)}')
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
  """Reads `root/dataset.json` (no images are read)."""
  root = epath.Path(root)
  _check_root(root)
  path = root / INFO_FILE
  if not path.exists():
    raise base.DataError(f'{path} is missing; every dataset folder needs one. Expected the layout\n{LAYOUT}')
  try:
    raw = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise _info_error(path, f'is not valid JSON ({e})') from e
  return _parse_info(raw, path)


def _list_files(folder: epath.Path) -> dict[str, epath.Path]:
  """Maps each file name in `folder` to its path, skipping hidden files."""
  return {p.name: p for p in folder.iterdir() if not p.name.startswith('.')}


def _suffix(name: str) -> str:
  dot = name.rfind('.')
  return name[dot:].lower() if dot > 0 else ''


def _stem(name: str) -> str:
  dot = name.rfind('.')
  return name[:dot] if dot > 0 else name


def _pair_files(image_dir: epath.Path, label_dir: epath.Path) -> list[tuple[str, str]]:
  """Returns sorted (image path, label path) pairs; raises DataError on any file without its partner."""
  images: dict[str, epath.Path] = {}
  for name, path in _list_files(image_dir).items():
    if _suffix(name) not in IMAGE_SUFFIXES:
      continue
    stem = _stem(name)
    if stem in images:
      raise base.DataError(f'{images[stem]} and {path} share the stem {stem!r}; keep one image per stem')
    images[stem] = path
  labels: dict[str, epath.Path] = {}
  for name, path in _list_files(label_dir).items():
    suffix = _suffix(name)
    if suffix in IMAGE_SUFFIXES and suffix != LABEL_SUFFIX:
      raise base.DataError(f'{path}: labels must be lossless PNG files (JPEG compression changes class ids); '
                           f'save it as {label_dir / (_stem(name) + LABEL_SUFFIX)}')
    if suffix == LABEL_SUFFIX:
      labels[_stem(name)] = path
  for stem, path in sorted(images.items()):
    if stem not in labels:
      raise base.DataError(f'{path} has no label: expected {label_dir / (stem + LABEL_SUFFIX)}. Add the label '
                           'or remove the image.')
  for stem, path in sorted(labels.items()):
    if stem not in images:
      raise base.DataError(f'{path} has no image: expected {image_dir / stem}' + '{' + ','.join(IMAGE_SUFFIXES)
                           + '}. Add the image or remove the label.')
  return [(str(images[s]), str(labels[s])) for s in sorted(images)]


def _decode(path: str) -> Image.Image:
  """Opens and fully decodes one image file (PIL decodes lazily, so truncation shows only on load).

  Truncated files raise only while PIL.ImageFile.LOAD_TRUNCATED_IMAGES keeps its default, False.
  """
  try:
    data = epath.Path(path).read_bytes()
  except OSError as e:
    raise base.DataError(f'{path}: cannot read the file ({e})') from e
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
    raise base.DataError(f'{path}: cannot decode the image ({type(e).__name__}: {e}); the file is corrupt or '
                         'truncated: re-create or re-download it, or remove it together with its '
                         'image/label partner') from e
  return image


def _image_array(path: str) -> np.ndarray:
  image = _decode(path)
  if image.mode != 'RGB':
    image = image.convert('RGB')
  return np.asarray(image, dtype=np.uint8)


def _label_array(path: str) -> np.ndarray:
  label = _decode(path)
  if label.mode in ('L', 'P'):
    return np.asarray(label, dtype=np.uint8)
  if label.mode in ('I', 'I;16', 'I;16B', 'I;16L'):  # 16/32-bit grey PNGs from some tools
    values = np.asarray(label)
    if values.min() < 0 or values.max() > 255:
      raise base.DataError(f'{path}: {label.mode} label holds values up to {values.max()}; labels must be 8-bit '
                           'class ids (save it as a mode L or P PNG)')
    return values.astype(np.uint8)
  channels = len(label.getbands())
  if channels > 1:
    raise base.DataError(f'{path}: label has {channels} channels (mode {label.mode}), probably a colour '
                         'visualisation; labels must be single-channel PNGs of class ids (mode L or P). Map each '
                         'colour to its class id (the palette in dataset.json) and save with mode L or P.')
  raise base.DataError(f'{path}: label has unsupported mode {label.mode}; save it as an 8-bit PNG (mode L or P)')


class FolderSource:
  """One split of a dataset folder; samples are named by their image path."""

  def __init__(self, root: str | epath.PathLike, split: str):
    root = epath.Path(root)
    _check_root(root)
    self.info = folder_info(root)
    self.split = split
    self.root = str(root)
    image_dir, label_dir = root / 'images' / split, root / 'labels' / split
    for folder in (image_dir, label_dir):
      if not folder.is_dir():
        found = sorted(p.name for p in (root / 'images').iterdir()) if (root / 'images').is_dir() else []
        raise base.DataError(f'{folder} is missing: no split {split!r} in {root} (splits found under images/: '
                             f'{found}). Expected the layout\n{LAYOUT}')
    self._pairs = _pair_files(image_dir, label_dir)
    if not self._pairs:
      raise base.DataError(f'{image_dir} holds no images ({", ".join(IMAGE_SUFFIXES)}). Expected the layout\n'
                           f'{LAYOUT}')

  def __len__(self) -> int:
    return len(self._pairs)

  def __getitem__(self, index: int) -> dict:
    """Returns {'image': uint8 (H, W, 3), 'label': uint8 (H, W), 'name': the image path}."""
    image_path, label_path = self._pairs[int(index)]
    return {'image': _image_array(image_path), 'label': _label_array(label_path), 'name': image_path}

  def sample_name(self, index: int) -> str:
    return self._pairs[int(index)][0]

  def label_path(self, index: int) -> str:
    return self._pairs[int(index)][1]

  def __repr__(self) -> str:
    return f'FolderSource(root={self.root!r}, split={self.split!r}, num_samples={len(self)})'
