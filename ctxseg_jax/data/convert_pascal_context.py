"""Writes PASCAL-Context label PNGs (60 ids, 0 = background) from the Detail API's `trainval_merged.json`.

    python -m ctxseg_jax.data.convert_pascal_context --json trainval_merged.json --root VOCdevkit/VOC2010 \\
        [--workers 8] [--overwrite]

writes <root>/SegmentationClassContext/<stem>.png (mode L, values 0..59) and
<root>/ImageSets/SegmentationContext/{train,val}.txt, the layout `pascal_context_59/60` read. The output is the
same as that of mmseg's `tools/dataset_converters/pascal_context.py`, computed without the Detail API or
pycocotools. What that converter does, as read from its source and the Detail API's `getMask`:

* The JSON is one dict. `images` holds {'image_id', 'file_name', 'height', 'width', 'phase', ...} records,
  `annos_segmentation` one record per region {'id', 'image_id', 'category_id', 'segmentation', ...} where
  `segmentation` is a COCO RLE {'size': [h, w], 'counts': <compressed string>}, `categories`
  {'category_id', 'name', ...}. (The other keys, boundaries, occlusion, parts and joints, are not used.)
* The images converted are those whose `phase` is 'train' (4998) or 'val' (5105); the split lists are their
  file-name stems, sorted. Other phases are skipped.
* `getMask(image)` starts from zeros of (height, width) and paints each annotation of the image, in the order
  the annotations appear in `annos_segmentation`, with its `category_id`: later annotations overwrite earlier
  ones where they overlap, and pixels no annotation covers stay 0. Records are indexed by id, so a repeated id
  keeps its first position and its last record.
* mmseg then asserts that every value left in the mask is one of the 60 ids in `CONTEXT_IDS` and maps each to
  its rank (0 -> 0, 2 -> 1, ..., 458 -> 59). An id outside the 60 stops it only when some of its pixels
  survive the painting; here that is a `DataError` naming the image and the ids.

Where the reference would crash or silently misbehave, this module raises `DataError` naming the file, image
or key instead: an annotation whose category is not listed in `categories`, or whose image is not in `images`;
an RLE whose size differs from the image's (the reference paints a partial mask or fails with IndexError);
run lengths that do not add up to h * w pixels. Uncompressed RLEs (counts as a list of ints) are accepted too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import pathlib
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ctxseg_jax.data.datasets import base
from ctxseg_jax.data.datasets import pascal_context

DataError = base.DataError

JSON_URL = 'https://codalabuser.blob.core.windows.net/public/trainval_merged.json'
LABEL_DIR = 'SegmentationClassContext'
SPLIT_DIR = os.path.join('ImageSets', 'SegmentationContext')
SPLITS = ('train', 'val')
REQUIRED_KEYS = ('images', 'annos_segmentation', 'categories')

# The 60 Detail category ids of PASCAL-Context, sorted: the label written for id CONTEXT_IDS[k] is k.
CONTEXT_IDS = (0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113,
               115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326,
               347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)
_UNMAPPED = 255
_LOOKUP = np.full(CONTEXT_IDS[-1] + 1, _UNMAPPED, np.uint8)
_LOOKUP[list(CONTEXT_IDS)] = np.arange(len(CONTEXT_IDS))

_MAX_CHARS_PER_COUNT = 12  # 60 bits: far beyond any uint32 count, and safe in int64


# --- RLE decoding ---------------------------------------------------------------------------------------------

def string_counts(counts: str | bytes) -> np.ndarray:
  """Decodes COCO's compressed RLE string into run lengths, int64 (n,).

  Each count is written as 5-bit groups, least significant first, one character per group (value + 48); bit
  0x20 of a character says another group follows, and bit 0x10 of the last group is the sign. From the fourth
  count on, the stored value is the difference to the count two places earlier. Like the C decoder, the
  results are taken modulo 2**32.
  """
  raw = counts.encode('ascii') if isinstance(counts, str) else bytes(counts)
  chars = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
  if chars.size == 0:
    return np.zeros(0, np.int64)
  if chars.min() < 0 or chars.max() > 63:
    bad = raw[int(np.flatnonzero((chars < 0) | (chars > 63))[0])]
    raise ValueError(f'compressed RLE counts hold {chr(bad)!r}, outside the alphabet "0".."o"')
  ends = np.flatnonzero((chars & 0x20) == 0)
  if ends.size == 0 or ends[-1] != chars.size - 1:
    raise ValueError('compressed RLE counts end in the middle of a number (truncated string?)')
  starts = np.concatenate([[0], ends[:-1] + 1])
  lengths = ends - starts + 1
  if lengths.max() > _MAX_CHARS_PER_COUNT:
    raise ValueError(f'compressed RLE counts hold a number of {lengths.max()} characters; at most '
                     f'{_MAX_CHARS_PER_COUNT} are plausible')
  position = np.arange(chars.size) - np.repeat(starts, lengths)
  values = np.add.reduceat((chars & 0x1f) << (5 * position), starts)
  negative = (chars[ends] & 0x10) != 0
  values[negative] -= np.left_shift(1, 5 * lengths[negative])
  result = values.copy()
  result[1::2] = np.cumsum(values[1::2])
  result[2::2] = np.cumsum(values[2::2])
  return result & 0xFFFFFFFF


def _rle_size(rle: Any) -> tuple[int, int]:
  if not isinstance(rle, dict) or 'size' not in rle or 'counts' not in rle:
    shown = sorted(rle) if isinstance(rle, dict) else type(rle).__name__
    raise ValueError(f"segmentation is not a COCO RLE dict with 'size' and 'counts' (got {shown})")
  size = rle['size']
  if (not isinstance(size, (list, tuple)) or len(size) != 2
      or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in size)):
    raise ValueError(f"RLE 'size' must be [height, width] of non-negative ints, got {size!r}")
  return int(size[0]), int(size[1])


def rle_counts(rle: dict) -> np.ndarray:
  """The run lengths of an RLE dict, int64 (n,): alternately background and foreground, background first."""
  counts = rle['counts']
  if isinstance(counts, (str, bytes)):
    return string_counts(counts)
  array = np.asarray(counts)
  if array.ndim != 1 or (array.size and array.dtype.kind not in 'iu'):
    raise ValueError("uncompressed RLE 'counts' must be a flat list of ints")
  array = array.astype(np.int64)
  if (array < 0).any():
    raise ValueError("uncompressed RLE 'counts' hold negative run lengths")
  return array


def _decode_flat(rle: dict) -> np.ndarray:
  """Decodes `rle` to bool (h * w,) in column-major pixel order."""
  h, w = _rle_size(rle)
  counts = rle_counts(rle)
  total = int(counts.sum())
  if total != h * w:
    raise ValueError(f'RLE run lengths add up to {total} pixels, but its size {h}x{w} has {h * w}')
  return np.repeat(np.arange(counts.size) % 2 == 1, counts)


def decode_rle(rle: dict) -> np.ndarray:
  """Decodes a COCO RLE {'size': [h, w], 'counts': str | bytes | list[int]} to a bool mask (h, w).

  Runs cover the pixels column by column (Fortran order), starting with a run of zeros, which may be empty.
  Raises ValueError when the RLE is malformed or its runs do not cover exactly h * w pixels.
  """
  h, w = _rle_size(rle)
  return _decode_flat(rle).reshape(w, h).T


# --- masks ----------------------------------------------------------------------------------------------------

def describe_image(image: dict) -> str:
  """'image <file_name> (image_id <id>)', for messages."""
  return f"image {image.get('file_name')!s} (image_id {image.get('image_id')})"


def check_annotation_size(image: dict, annotation: dict) -> None:
  """Raises DataError when `annotation`'s RLE is not the size of `image`."""
  try:
    size = _rle_size(annotation.get('segmentation'))
  except ValueError as e:
    raise DataError(f"{describe_image(image)}, annotation {annotation.get('id')}: {e}") from None
  if size != (image['height'], image['width']):
    raise DataError(
        f"{describe_image(image)}: annotation {annotation.get('id')} has an RLE mask of size {size[0]}x{size[1]} "
        f"but the image is {image['height']}x{image['width']} (height x width); the annotation file is "
        f'inconsistent: download trainval_merged.json again from {JSON_URL}')


def semantic_mask(image: dict, annotations: Iterable[dict]) -> np.ndarray:
  """The Detail API's class mask of one image: int32 (height, width) of raw category ids, 0 = unlabelled.

  Args:
    image: the image record; 'height' and 'width' are used ('file_name' and 'image_id' name it in errors).
    annotations: the image's `annos_segmentation` records ('category_id', 'segmentation', 'id'), painted in
      this order, so later ones win where they overlap.
  """
  h, w = image['height'], image['width']
  flat = np.zeros(h * w, np.int32)  # column-major, like the RLEs
  for annotation in annotations:
    check_annotation_size(image, annotation)
    try:
      pixels = _decode_flat(annotation['segmentation'])
    except ValueError as e:
      raise DataError(f"{describe_image(image)}, annotation {annotation.get('id')}: {e}") from None
    flat[pixels] = annotation['category_id']
  return flat.reshape(w, h).T.copy()


def to_context_ids(mask: np.ndarray, where: str = 'mask') -> np.ndarray:
  """Maps raw Detail category ids (any shape) to PASCAL-Context labels, uint8 of the same shape, 0..59.

  Id `CONTEXT_IDS[k]` becomes k. Any other id raises DataError naming `where` and the ids, as mmseg's
  converter stops (on an assertion) for such masks.
  """
  mask = np.asarray(mask)
  if mask.dtype.kind == 'f':
    if not np.array_equal(mask, np.round(mask)):
      raise DataError(f'{where}: category ids must be whole numbers')
    mask = mask.astype(np.int64)
  elif mask.dtype.kind not in 'iub':
    raise DataError(f'{where}: category ids must be integers, got dtype {mask.dtype}')
  known = (mask >= 0) & (mask < _LOOKUP.size)
  labels = _LOOKUP[np.where(known, mask, 1).astype(np.intp)]  # 1 is not a context id: maps to _UNMAPPED
  unmapped = labels == _UNMAPPED
  if unmapped.any():
    ids = np.unique(mask[unmapped]).tolist()
    raise DataError(
        f'{where}: category id(s) {ids} are not among the 60 PASCAL-Context ids {list(CONTEXT_IDS)} '
        f"(mmseg's converter stops on these too); use the Detail API's trainval_merged.json from {JSON_URL}")
  return labels


# --- the annotation file --------------------------------------------------------------------------------------

@dataclasses.dataclass
class ContextAnnotations:
  """The parts of trainval_merged.json the labels need, in the reference's order.

  Attributes:
    images: the image records of phase 'train' or 'val', in file order.
    annotations: image_id -> that image's segmentation records, reduced to 'id', 'category_id' and
      'segmentation', in painting order.
    skipped: phase -> number of images of other phases (not converted).
    source: the file name, for messages.
  """
  images: list[dict]
  annotations: dict[Any, list[dict]]
  skipped: dict[str, int]
  source: str = 'trainval_merged.json'


def _require(record: Any, keys: Sequence[str], what: str, source: str) -> None:
  if not isinstance(record, dict):
    raise DataError(f'{source}: {what} is a {type(record).__name__}, not a dict')
  missing = [k for k in keys if k not in record]
  if missing:
    raise DataError(f'{source}: {what} has no {missing[0]!r} key (found keys {sorted(record)}); this is not the '
                    f"Detail API's trainval_merged.json, which is at {JSON_URL}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def index_annotations(data: Any, source: str = 'trainval_merged.json') -> ContextAnnotations:
  """Checks the structure of a loaded trainval_merged.json and indexes it as the Detail API does.

  Raises DataError naming `source` and the offending key, record or image.
  """
  if not isinstance(data, dict):
    raise DataError(f"{source}: the top level is a {type(data).__name__}, not a dict; this is not the Detail "
                    f"API's trainval_merged.json, which is at {JSON_URL}")
  missing = [k for k in REQUIRED_KEYS if k not in data]
  if missing:
    raise DataError(f'{source}: no {missing[0]!r} key (found keys {sorted(data)}; expected {list(REQUIRED_KEYS)}); '
                    f"this is not the Detail API's trainval_merged.json, which is at {JSON_URL}")
  for key in REQUIRED_KEYS:
    if not isinstance(data[key], list):
      raise DataError(f'{source}: {key!r} is a {type(data[key]).__name__}, not a list')

  images: dict[Any, dict] = {}
  for i, image in enumerate(data['images']):
    _require(image, ('image_id', 'file_name', 'height', 'width', 'phase'), f"images[{i}]", source)
    if not (_is_int(image['height']) and _is_int(image['width']) and image['height'] > 0 and image['width'] > 0):
      raise DataError(f"{source}: {describe_image(image)} has height {image['height']!r} and width "
                      f"{image['width']!r}; both must be positive ints")
    images[image['image_id']] = {k: image[k] for k in ('image_id', 'file_name', 'height', 'width', 'phase')}
  category_ids = set()
  for i, category in enumerate(data['categories']):
    _require(category, ('category_id',), f'categories[{i}]', source)
    category_ids.add(category['category_id'])
  segmentations: dict[Any, dict] = {}
  for i, annotation in enumerate(data['annos_segmentation']):
    _require(annotation, ('id', 'image_id', 'category_id', 'segmentation'), f'annos_segmentation[{i}]', source)
    segmentations[annotation['id']] = annotation

  selected = {image_id: image for image_id, image in images.items() if image['phase'] in SPLITS}
  annotations: dict[Any, list[dict]] = {image_id: [] for image_id in selected}
  for annotation in segmentations.values():
    image = images.get(annotation['image_id'])
    if image is None:
      raise DataError(f"{source}: annotation {annotation['id']} refers to image_id {annotation['image_id']!r}, "
                      "which is not in 'images'; the file is inconsistent: download trainval_merged.json again "
                      f'from {JSON_URL}')
    if not _is_int(annotation['category_id']) or annotation['category_id'] not in category_ids:
      raise DataError(f"{source}: {describe_image(image)}: annotation {annotation['id']} has category_id "
                      f"{annotation['category_id']!r}, which is not listed in 'categories'")
    if annotation['image_id'] in selected:
      check_annotation_size(image, annotation)
      annotations[annotation['image_id']].append(
          {k: annotation[k] for k in ('id', 'category_id', 'segmentation')})

  stems: dict[str, dict] = {}
  for image in selected.values():
    stem = image_stem(image)
    if stem in stems:
      raise DataError(f'{source}: {describe_image(stems[stem])} and {describe_image(image)} would both be '
                      f'written to {stem}.png')
    stems[stem] = image
  skipped: dict[str, int] = {}
  for image in images.values():
    if image['phase'] not in SPLITS:
      skipped[str(image['phase'])] = skipped.get(str(image['phase']), 0) + 1
  if not selected:
    raise DataError(f"{source}: no image has phase 'train' or 'val' (phases found: {sorted(skipped)})")
  return ContextAnnotations(images=list(selected.values()), annotations=annotations, skipped=skipped,
                            source=source)


def load_annotations(json_path: str | os.PathLike) -> ContextAnnotations:
  """Reads and indexes trainval_merged.json; raises DataError naming the file when it cannot."""
  path = pathlib.Path(json_path)
  if not path.is_file():
    what = 'is a directory, not a file' if path.is_dir() else 'does not exist'
    raise DataError(f'{path} {what}; download trainval_merged.json from {JSON_URL} and pass its path as --json')
  try:
    with open(path, 'rb') as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f'{path} is not valid JSON ({e}); the download may be truncated: fetch it again from '
                    f'{JSON_URL}') from None
  return index_annotations(data, source=str(path))


def image_stem(image: dict) -> str:
  """The name written for an image record: its file name without folder and extension."""
  return os.path.splitext(os.path.basename(str(image['file_name'])))[0]


# --- writing --------------------------------------------------------------------------------------------------

def context_label(image: dict, annotations: Iterable[dict], source: str = 'trainval_merged.json') -> np.ndarray:
  """The label written for `image`: uint8 (height, width), 0..59."""
  return to_context_ids(semantic_mask(image, annotations), where=f'{source}: {describe_image(image)}')


def _write_png(path: pathlib.Path, label: np.ndarray) -> None:
  partial = path.with_name(path.name + '.partial')
  Image.fromarray(np.ascontiguousarray(label, np.uint8)).save(partial, format='PNG')
  os.replace(partial, path)


def _convert_one(task: tuple[dict, list[dict], str, str]) -> str:
  image, annotations, out_path, source = task
  _write_png(pathlib.Path(out_path), context_label(image, annotations, source))
  return image['phase']


class _Progress:
  """One updating line on stderr: 'label PNGs: done/total  elapsed'."""

  def __init__(self, total: int, enabled: bool):
    self.total, self.enabled, self.done = total, enabled, 0
    self.start = self.last = time.monotonic()
    self.interval = 0.1 if enabled and sys.stderr.isatty() else 5.0

  def step(self) -> None:
    self.done += 1
    now = time.monotonic()
    if self.enabled and (now - self.last >= self.interval or self.done == self.total):
      self.last = now
      sys.stderr.write(f'\rlabel PNGs: {self.done}/{self.total}  {now - self.start:.1f}s')
      sys.stderr.flush()

  def close(self) -> None:
    if self.enabled:
      sys.stderr.write('\n')
      sys.stderr.flush()


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
  """What `convert` wrote: label PNGs per split, the split list files, and the phases it skipped."""
  label_dir: pathlib.Path
  split_files: dict[str, pathlib.Path]
  counts: dict[str, int]
  skipped: dict[str, int]
  seconds: float


def _check_root(root: pathlib.Path) -> None:
  if not root.is_dir():
    what = 'is not a folder' if root.exists() else 'does not exist'
    raise DataError(f'output root {root} {what}; pass --root=<VOCdevkit/VOC2010> (the folder holding '
                    'JPEGImages), or create the folder first')
  if not (root / 'JPEGImages').is_dir() and (root / 'VOC2010' / 'JPEGImages').is_dir():
    raise DataError(f'{root} holds VOC2010/JPEGImages: pass --root={root / "VOC2010"}')


def convert(json_path: str | os.PathLike, root: str | os.PathLike, workers: int = 1, *, overwrite: bool = False,
            progress: bool = False) -> ConversionSummary:
  """Writes <root>/SegmentationClassContext/<stem>.png for every train and val image of `json_path`, then
  <root>/ImageSets/SegmentationContext/{train,val}.txt (sorted stems).

  Args:
    json_path: the Detail API's trainval_merged.json.
    root: an existing VOCdevkit/VOC2010 folder.
    workers: processes that decode and encode labels; 1 converts in this process.
    overwrite: replace label PNGs and split lists that already exist (others are left alone); without it,
      existing outputs raise DataError before anything is written.
    progress: print an updating progress line on stderr.
  """
  start = time.monotonic()
  root = pathlib.Path(root)
  _check_root(root)
  if progress:
    print(f'reading {json_path} ...', file=sys.stderr, flush=True)
  index = load_annotations(json_path)
  label_dir, split_dir = root / LABEL_DIR, root / SPLIT_DIR
  targets = {image['image_id']: label_dir / f'{image_stem(image)}.png' for image in index.images}
  split_files = {split: split_dir / f'{split}.txt' for split in SPLITS}
  if not overwrite:
    existing = [p for p in list(targets.values()) + list(split_files.values()) if p.exists()]
    if existing:
      raise DataError(f'{len(existing)} output file(s) already exist, e.g. {existing[0]}; pass --overwrite to '
                      'replace them')
  label_dir.mkdir(exist_ok=True)
  split_dir.mkdir(parents=True, exist_ok=True)

  tasks = [(image, index.annotations[image['image_id']], str(targets[image['image_id']]), index.source)
           for image in index.images]
  counts = dict.fromkeys(SPLITS, 0)
  bar = _Progress(len(tasks), progress)
  try:
    if workers > 1 and len(tasks) > 1:
      processes = min(workers, len(tasks))
      chunksize = max(1, min(16, len(tasks) // (4 * processes)))
      with multiprocessing.get_context('spawn').Pool(processes) as pool:
        for phase in pool.imap_unordered(_convert_one, tasks, chunksize=chunksize):
          counts[phase] += 1
          bar.step()
    else:
      for task in tasks:
        counts[_convert_one(task)] += 1
        bar.step()
  finally:
    bar.close()

  for split, path in split_files.items():
    stems = sorted(image_stem(image) for image in index.images if image['phase'] == split)
    path.write_text(''.join(f'{stem}\n' for stem in stems))
  return ConversionSummary(label_dir=label_dir, split_files=split_files, counts=counts, skipped=index.skipped,
                           seconds=time.monotonic() - start)


def summary_text(summary: ConversionSummary) -> str:
  """A few lines for the user: what was written where, and how it compares with the standard release."""
  per_split = ', '.join(f'{split} {n}' for split, n in summary.counts.items())
  lines = [f'wrote {sum(summary.counts.values())} label PNGs ({per_split}) to {summary.label_dir} '
           f'in {summary.seconds:.1f}s',
           f"split lists: {', '.join(str(p) for p in summary.split_files.values())}"]
  if summary.skipped:
    lines.append('skipped images of other phases: '
                 + ', '.join(f'{phase} {n}' for phase, n in sorted(summary.skipped.items())))
  expected = pascal_context.NUM_IMAGES
  if any(summary.counts.get(split) != n for split, n in expected.items()):
    lines.append('note: the standard release has ' + ', '.join(f'{split} {n}' for split, n in expected.items())
                 + ' images')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m ctxseg_jax.data.convert_pascal_context',
      description='Write PASCAL-Context label PNGs (60 ids) and split lists from trainval_merged.json.')
  parser.add_argument('--json', required=True, help="the Detail API's trainval_merged.json")
  parser.add_argument('--root', required=True, help='the VOCdevkit/VOC2010 folder to write into')
  parser.add_argument('--workers', type=int, default=min(os.cpu_count() or 1, 16),
                      help='worker processes (default: the CPU count, at most 16)')
  parser.add_argument('--overwrite', action='store_true', help='replace label PNGs and split lists that exist')
  args = parser.parse_args(argv)
  if args.workers < 1:
    parser.error('--workers must be at least 1')
  try:
    summary = convert(args.json, args.root, args.workers, overwrite=args.overwrite, progress=True)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(summary_text(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
