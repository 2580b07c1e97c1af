"""Datasets stored as image and label files: decoding, raw-label mapping, pairing and a shared source class.

Every on-disk layout (PASCAL-Context, ADE20K, Cityscapes, COCO-Stuff, CamVid, the generic folder) reduces to a
list of `Pair`s, each an image file, its label file and the name of the `LabelMap` that turns the label's raw
values into training ids. `FilePairSource` decodes, checks and maps one pair per `__getitem__`.

Listing collects every problem (an image without its label, a label without its image) instead of stopping at
the first: `--mode check_data` reports them all, and training refuses to start while there are any.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Callable, Iterable, NamedTuple, Sequence

from etils import epath
import numpy as np
from PIL import Image

from ctxseg_jax.data.datasets import base

# How many listing problems an error message shows before pointing at --mode check_data for the rest.
_MAX_PROBLEMS_SHOWN = 10


class Pair(NamedTuple):
  image: str      # path of the RGB image file
  label: str      # path of the single-channel label PNG
  label_map: str  # key into the source's label maps


@dataclasses.dataclass(frozen=True, eq=False)
class LabelMap:
  """Raw 8-bit label values -> training ids.

  Attributes:
    lut: uint8 (256,): the training id (or ignore index) of each raw value.
    valid: bool (256,): which raw values may occur; any other value is an error naming the file.
    description: the valid raw values in words, for error messages (e.g. '0..59 and 255').
  """
  lut: np.ndarray
  valid: np.ndarray
  description: str

  @classmethod
  def from_dict(cls, mapping: dict[int, int], description: str) -> LabelMap:
    """A map from {raw value: training id}; raw values not in `mapping` are invalid."""
    lut, valid = np.zeros(256, np.uint8), np.zeros(256, bool)
    for raw, train_id in mapping.items():
      lut[raw], valid[raw] = train_id, True
    return cls(lut, valid, description)

  def apply(self, raw: np.ndarray, path: str, info: base.DatasetInfo) -> np.ndarray:
    """Maps a uint8 (H, W) raw label to training ids; raises DataError naming `path` on invalid values."""
    mapped = self.lut[raw]
    if not self.valid[raw].all():
      values = np.unique(raw[~self.valid[raw]])
      raise base.DataError(
          f'{path}: label values {values[:10].tolist()} are not valid raw labels of {info.name} (valid: '
          f'{self.description}; they become training ids 0..{info.num_classes - 1} and ignore '
          f'{info.ignore_index}). The file is corrupt or from another dataset or converter: re-create it.')
    return mapped


def identity_map(num_classes: int, ignore_index: int) -> LabelMap:
  """Labels already hold training ids: 0..num_classes-1 and ignore_index."""
  mapping = {i: i for i in range(num_classes)}
  mapping[ignore_index] = ignore_index
  return LabelMap.from_dict(mapping, f'0..{num_classes - 1} and {ignore_index}')


def reduce_zero_map(num_classes: int, ignore_index: int) -> LabelMap:
  """Raw 0 is ignored and 1..num_classes become 0..num_classes-1 (mmseg reduce_zero_label); raw 255 stays ignore."""
  mapping = {i + 1: i for i in range(num_classes)}
  mapping[0] = mapping[255] = ignore_index
  return LabelMap.from_dict(mapping, f'0 (ignored), 1..{num_classes} and 255 (ignored)')


# What PIL raises for a file that is not a complete image of a known format.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def decode_bytes(data: bytes, where: str, fix: str) -> Image.Image:
  """Fully decodes encoded image bytes (PIL decodes lazily, so truncation shows only on load, and only while
  PIL.ImageFile.LOAD_TRUNCATED_IMAGES keeps its default, False); a DataError naming `where` and `fix` otherwise."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except _DECODE_ERRORS as e:
    raise base.DataError(f'{where}: cannot decode the image ({type(e).__name__}: {e}); {fix}') from e
  return image


def decode(path: str) -> Image.Image:
  """Reads and fully decodes one image file; raises DataError naming `path`."""
  try:
    data = epath.Path(path).read_bytes()
  except OSError as e:
    raise base.DataError(f'{path}: cannot read the file ({e})') from e
  return decode_bytes(data, path, 'the file is corrupt or truncated: re-create or re-download it, or remove it '
                                  'together with its image/label partner')


def header_size(path: str, data: bytes | None = None,
                fix: str = 'the file is corrupt or truncated: re-create or re-download it, or remove it'
                ) -> tuple[int, int]:
  """The (h, w) of an image file (or of its encoded bytes `data`), read from its header without decoding the
  pixels; raises DataError naming `path` and `fix`."""
  try:
    with (io.BytesIO(data) if data is not None else epath.Path(path).open('rb')) as f:
      width, height = Image.open(f).size
  except OSError as e:  # UnidentifiedImageError included
    raise base.DataError(f'{path}: cannot read the image header ({e}); {fix}') from e
  return height, width


def rgb_array(image: Image.Image) -> np.ndarray:
  """uint8 (H, W, 3) RGB pixels of a decoded image of any mode."""
  return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'), dtype=np.uint8)


def image_array(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB pixels of an image file."""
  return rgb_array(decode(path))


def label_values(label: Image.Image, where: str) -> np.ndarray:
  """uint8 (H, W) raw values of a decoded single-channel label (mode L or P read as indices, 16/32-bit if <= 255);
  a DataError naming `where` for any other kind of image."""
  if label.mode in ('L', 'P'):
    return np.asarray(label, dtype=np.uint8)
  if label.mode in ('I', 'I;16', 'I;16B', 'I;16L'):
    values = np.asarray(label)
    if values.min() < 0 or values.max() > 255:
      raise base.DataError(f'{where}: {label.mode} label holds values up to {values.max()}; labels must be 8-bit '
                           'class ids (save it as a mode L or P PNG)')
    return values.astype(np.uint8)
  channels = len(label.getbands())
  if channels > 1:
    raise base.DataError(f'{where}: label has mode {label.mode} ({channels} channels), probably a colour '
                         'visualisation; labels must be single-channel PNGs of class ids (mode L or P). Map each '
                         'colour to its class id and save with mode L or P.')
  raise base.DataError(f'{where}: label has unsupported mode {label.mode}; save it as an 8-bit PNG (mode L or P)')


def raw_label_array(path: str) -> np.ndarray:
  """uint8 (H, W) raw values of a single-channel label PNG file (see label_values)."""
  return label_values(decode(path), path)


def match_by_key(images: dict[str, str], labels: dict[str, str], *, expected_label: Callable[[str], str],
                 expected_image: Callable[[str], str]) -> tuple[list[tuple[str, str, str]], list[str]]:
  """Pairs image and label files that share a key.

  Args:
    images, labels: key -> file path.
    expected_label, expected_image: key -> the path the missing partner should have, for messages.
  Returns:
    (sorted (key, image path, label path) triples, one problem per unpaired file).
  """
  problems = [f'{path} has no label: expected {expected_label(key)}. Add the label or remove the image.'
              for key, path in sorted(images.items()) if key not in labels]
  problems += [f'{path} has no image: expected {expected_image(key)}. Add the image or remove the label.'
               for key, path in sorted(labels.items()) if key not in images]
  return [(key, images[key], labels[key]) for key in sorted(images) if key in labels], problems


def files_with_suffix(folder: epath.Path, suffixes: Iterable[str], *, in_subfolders: bool = False) -> dict[str, str]:
  """Maps the name of each non-hidden file in `folder` (or, with in_subfolders, in its direct subfolders, like
  Cityscapes' <split>/<city>/) ending in one of `suffixes` to its path."""
  suffixes = tuple(s.lower() for s in suffixes)
  paths = folder.glob('*/*') if in_subfolders else folder.iterdir()
  return {p.name: str(p) for p in paths if p.name.lower().endswith(suffixes) and not p.name.startswith('.')}


def raise_listing_problems(what: str, problems: Sequence[str]) -> None:
  """Raises one DataError listing the problems found while listing `what` (a split's files), if any: the first
  few, and a pointer to --mode check_data for the rest."""
  if not problems:
    return
  shown = '\n  '.join(problems[:_MAX_PROBLEMS_SHOWN])
  more = len(problems) - _MAX_PROBLEMS_SHOWN
  raise base.DataError(f'{what}: {len(problems)} problem(s) with its files:\n  {shown}'
                       + (f'\n  ... and {more} more' if more > 0 else '')
                       + '\nRun --mode check_data to list every problem.')


def missing_folder_error(folder: epath.Path, what: str, layout: str, prepare: str) -> base.DataError:
  """The error for a dataset folder that is not there: names it, shows the layout and how to prepare it."""
  return base.DataError(f'{folder} is missing ({what}). Expected the layout\n{layout}\n{prepare}')


class FilePairSource:
  """One split of a file-based dataset: a grain random-access source of decoded, mapped samples.

  Attributes:
    info: the dataset's metadata.
    split: the split's name as configured.
    pairs: the (image, label, label map) files, in a fixed sorted order.
    label_maps: label map name -> LabelMap.
    problems: listing problems (unpaired files); the pairs exclude them.
    notes: non-fatal findings, e.g. a split size that differs from the official one.
  """

  def __init__(self, info: base.DatasetInfo, split: str, pairs: Sequence[Pair], label_maps: dict[str, LabelMap],
               *, problems: Sequence[str] = (), expected_size: int | None = None, root: str = ''):
    self.info, self.split, self.root = info, split, root
    self.pairs, self.label_maps = list(pairs), dict(label_maps)
    self.problems = list(problems)
    self.notes: list[str] = []
    if expected_size is not None and len(self.pairs) != expected_size:
      self.notes.append(f'{info.name}/{split} in {root}: found {len(self.pairs)} image/label pairs, the official '
                        f'split has {expected_size}. Fine for a subset; otherwise files are missing.')

  def raise_problems(self) -> None:
    """Raises one DataError listing the listing problems, if any (training must not silently skip files)."""
    raise_listing_problems(f'{self.info.name}/{self.split} in {self.root}', self.problems)

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, index: int) -> dict:
    """Returns {'image': uint8 (H, W, 3), 'label': uint8 (H, W) training ids, 'name': the image path}."""
    pair = self.pairs[int(index)]
    image = image_array(pair.image)
    raw = raw_label_array(pair.label)
    if image.shape[:2] != raw.shape:
      raise base.DataError(f'{pair.image} is {image.shape[1]}x{image.shape[0]} (WxH) but its label {pair.label} is '
                           f'{raw.shape[1]}x{raw.shape[0]}; they must be the same size (re-create the label, or '
                           'remove both files)')
    label = self.label_maps[pair.label_map].apply(raw, pair.label, self.info)
    return {'image': image, 'label': label, 'name': pair.image}

  def sample_name(self, index: int) -> str:
    return self.pairs[int(index)].image

  def sample_size(self, index: int) -> tuple[int, int]:
    """The (h, w) of image `index`, from its file's header (the pixels are not decoded)."""
    return header_size(self.pairs[int(index)].image)

  def encoded_image(self, index: int) -> bytes:
    """The image file's bytes as stored (for packing without re-encoding)."""
    return epath.Path(self.pairs[int(index)].image).read_bytes()

  def label_path(self, index: int) -> str:
    return self.pairs[int(index)].label

  def __repr__(self) -> str:
    return (f'{type(self).__name__}(dataset={self.info.name!r}, split={self.split!r}, root={self.root!r}, '
            f'num_samples={len(self)})')


def require_split_folders(split: str, image_dir: epath.Path, label_dir: epath.Path, layout: str,
                          prepare: str) -> None:
  """A DataError naming the first of a split's image and label folders that is missing, with the layout."""
  for path, what in ((image_dir, f'the {split} images'), (label_dir, f'the {split} annotations')):
    if not path.is_dir():
      raise missing_folder_error(path, what, layout, prepare)


def dataset_root(data_config, name: str, root_example: str, layout: str, prepare: str) -> epath.Path:
  """config.data.root as a path; a DataError showing the layout and how to prepare it when empty or missing."""
  if not data_config.root:
    raise base.DataError(f'config.data.root is empty; data.name={name} reads the dataset from disk: set '
                         f'--config.data.root={root_example} (local or gs://), laid out as\n{layout}\n{prepare}')
  root = epath.Path(data_config.root)
  if not root.is_dir():
    raise missing_folder_error(root, f'config.data.root of data.name={name}', layout, prepare)
  return root


def resolve_split(name: str, split: str, folders: dict[str, str]) -> str:
  """The folder name of `split` (e.g. 'val' -> 'validation'); a DataError listing the splits when unknown."""
  if split not in folders:
    raise base.DataError(f'{name} has no split {split!r}; its splits are {sorted(folders)} (check '
                         '--config.data.train_split and --config.data.eval_split)')
  return folders[split]


def pair_folders(image_dir: epath.Path, label_dir: epath.Path, *, image_suffix: str,
                 label_suffixes: dict[str, str], in_subfolders: bool = False) -> tuple[list[Pair], list[str]]:
  """Pairs `<key><image_suffix>` in image_dir with `<key><label suffix>` in label_dir (or in their direct
  subfolders).

  Args:
    label_suffixes: label file suffix -> label map name, in order of preference: when a key has labels with
      several suffixes (e.g. Cityscapes' labelTrainIds and labelIds), the first listed is used.
  Returns:
    (pairs sorted by key, one problem per unpaired file).
  """
  images = {name[:-len(image_suffix)]: path
            for name, path in files_with_suffix(image_dir, (image_suffix,), in_subfolders=in_subfolders).items()}
  labels: dict[str, tuple[str, str]] = {}
  for suffix, map_name in reversed(list(label_suffixes.items())):  # preferred suffixes overwrite the others
    for name, path in files_with_suffix(label_dir, (suffix,), in_subfolders=in_subfolders).items():
      longer = [other for other in label_suffixes if len(other) > len(suffix) and other.endswith(suffix)]
      if not any(name.endswith(other) for other in longer):  # 'x_labelTrainIds.png' is not a raw 'x.png'
        labels[name[:-len(suffix)]] = (path, map_name)
  preferred = next(iter(label_suffixes))

  def partner(folder: epath.Path, key: str, suffix: str, path: str) -> str:
    """Where the missing partner of `path` should be (in the same-named subfolder, e.g. Cityscapes' city)."""
    return str((folder / epath.Path(path).parent.name if in_subfolders else folder) / (key + suffix))

  matched, problems = match_by_key(
      images, {key: path for key, (path, _) in labels.items()},
      expected_label=lambda key: partner(label_dir, key, preferred, images[key]),
      expected_image=lambda key: partner(image_dir, key, image_suffix, labels[key][0]))
  return [Pair(image, label, labels[key][1]) for key, image, label in matched], problems
