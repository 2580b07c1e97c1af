"""`--mode predict`: a checkpoint's predictions written as images, for a folder or glob of images or the eval split.

    python -m ctxseg_jax.main --config CONFIG --workdir W --mode predict --input DIR_OR_GLOB --output OUT

Input: a folder (every image file under it, sub-folders included, sorted by path; hidden files and OUT, when it is
inside, left out), a glob (every file it matches; `**` recurses on local paths) or one image file. Without
--input, the configured eval split (config.data.eval_split), with its labels. Images are read as RGB uint8 and
go through evaluation's preprocessing and static-shape batches (pipeline.eval_batches), so a prediction is what
--mode eval scores. Per image, under OUT and named after the input file's stem:

  <stem>.png           the predicted class ids at the image's resolution: a palette PNG (mode P) whose pixel values
                       are the class ids and whose palette holds the dataset's colours; with
                       label_format='cityscapes_label_ids', a mode L PNG of Cityscapes labelIds (the test server's)
  <stem>_overlay.jpg   the prediction's colours blended over the image (alpha 0.5)
  <stem>_compare.png   labelled split only: image | prediction | ground truth, under a line with the image's mIoU
  per_image.csv        labelled split only: name (the stem), image, miou, then iou/<class> for every class, in
                       percent: IoU over the image's labelled pixels, mIoU over the classes present in its label or
                       prediction (empty: no such class)
  predict.json         the checkpoint and label format the folder was written with

Resumable: every file is written atomically (storage.write_atomic: locally under a temporary name renamed once
complete, on gs:// as one object), so a file that exists is complete. An image whose files all exist (and, for a
labelled split, whose per_image.csv row exists) is skipped; only the others are run. A folder written from another
checkpoint or label format is refused.

An unreadable input file stops the run with an error naming it; the images finished before it are kept, so the
same command continues once the file is fixed or removed.

Multi-host: every process runs every batch (the jitted step is global) and writes the images it loaded, so OUT
must be one shared folder (a shared filesystem or gs://); process 0 decides what is left to do, writes
per_image.csv and prints the progress.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import glob
import io
import json
import math
import re
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from PIL import Image, ImageDraw, ImageFont

from ctxseg_jax import evaluate, experiment, metrics, parallel, reporting, storage
from ctxseg_jax.checkpoints import checkpoint_dir
from ctxseg_jax.config import ConfigError
from ctxseg_jax.data import datasets, eval_plan, pipeline
from ctxseg_jax.data.datasets import cityscapes, files
from ctxseg_jax.data.datasets.base import DataError, DatasetInfo
from ctxseg_jax.data.export import label_palette

_UNREADABLE_FIX = ('it is not a readable image: fix or remove it and run the same command again (the images '
                   'already written are kept)')
LABEL_FORMATS = ('palette', 'cityscapes_label_ids')
IMAGE_SUFFIXES = ('.bmp', '.jpeg', '.jpg', '.png', '.tif', '.tiff', '.webp')
CSV_FILE = 'per_image.csv'
MANIFEST_FILE = 'predict.json'
OVERLAY_ALPHA = 0.5
_WRITER_THREADS = 4
_CSV_FLUSH_EVERY_S = 30.0


class ImageFileSource:
  """Image files to predict: a grain source of {'image': uint8 (H, W, 3) RGB, 'name': the path}, no label."""

  def __init__(self, paths: Sequence[str]):
    self.paths = list(paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    path = self.paths[int(index)]
    try:
      data = epath.Path(path).read_bytes()
    except OSError as e:
      raise DataError(f'{path}: cannot read the file ({e})') from e
    image = files.decode_bytes(data, path, _UNREADABLE_FIX)
    return {'image': files.rgb_array(image), 'name': path}

  def sample_name(self, index: int) -> str:
    return self.paths[int(index)]

  def sample_size(self, index: int) -> tuple[int, int]:
    return files.header_size(self.paths[int(index)], fix=_UNREADABLE_FIX)


class _Subset:
  """The samples `indices` of a source, in that order."""

  def __init__(self, source, indices: Sequence[int]):
    self.source, self.indices = source, list(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[self.indices[int(index)]]

  def sample_name(self, index: int) -> str:
    return self.source.sample_name(self.indices[int(index)])

  def sample_size(self, index: int) -> tuple[int, int]:
    return eval_plan.sample_size(self.source, self.indices[int(index)])


def _inside(path: epath.Path, folder: epath.Path) -> bool:
  return path == folder or folder in path.parents


def _local(path: str) -> bool:
  return '://' not in path


def list_images(input_path: str, exclude: str | epath.PathLike | None = None) -> list[str]:
  """The image files `input_path` names, sorted: a folder's image files (IMAGE_SUFFIXES, any case), sub-folders
  included, hidden files and folders left out; every file a glob matches; or one file. Files under `exclude`
  (the output folder) are left out. A DataError when there is none."""
  exclude_path = None if exclude is None else _absolute(exclude)
  path = epath.Path(input_path)
  if glob.has_magic(input_path):
    if _local(input_path):
      found = [epath.Path(p) for p in glob.glob(input_path, recursive=True)]
    else:
      parts = input_path.split('/')
      first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
      found = list(epath.Path('/'.join(parts[:first])).glob('/'.join(parts[first:])))
    found = [p for p in found if p.is_file()]
    what = f'the glob {input_path!r} matches no file'
  elif path.is_dir():
    found = _folder_images(path)
    what = f'{input_path} holds no image file ({", ".join(IMAGE_SUFFIXES)})'
  elif path.is_file():
    found = [path]
    what = f'{input_path} is'
  else:
    raise DataError(f'--input {input_path}: no such file or folder (pass a folder of images, a glob such as '
                    f'"photos/*.jpg" in quotes, or one image file)')
  if exclude_path is not None:
    found = [p for p in found if not _inside(_absolute(p), exclude_path)]
  if not found:
    raise DataError(what + ('' if exclude is None else f' outside the output folder {exclude}'))
  return sorted(str(p) for p in found)


def _folder_images(folder: epath.Path) -> list[epath.Path]:
  images, folders = [], [folder]
  while folders:
    for entry in folders.pop().iterdir():
      if entry.name.startswith('.'):
        continue
      if entry.is_dir():
        folders.append(entry)
      elif entry.name.lower().endswith(IMAGE_SUFFIXES):
        images.append(entry)
  return images


def _absolute(path: str | epath.PathLike) -> epath.Path:
  path = epath.Path(path)
  return path.absolute() if _local(str(path)) else path


def output_stem(name: str) -> str:
  """The file stem outputs are named after: the last path component of a sample name without its extension
  ('leftImg8bit/val/lindau/x_leftImg8bit.png' -> 'x_leftImg8bit'), characters other than letters, digits, '.',
  '-' and '_' replaced by '_' ('packed/val[3]' -> 'val_3')."""
  last = name.rstrip('/').rsplit('/', 1)[-1]
  dot = last.rfind('.')
  stem = last[:dot] if dot > 0 else last
  return re.sub(r'[^\w.-]+', '_', stem).strip('_') or 'image'


def _output_names(stem: str, labelled: bool) -> tuple[str, ...]:
  return (f'{stem}.png', f'{stem}_overlay.jpg') + ((f'{stem}_compare.png',) if labelled else ())


def _check_names(names: Sequence[str], stems: Sequence[str], labelled: bool, out: epath.Path) -> None:
  """A DataError listing inputs whose outputs would share a file name, or outputs that would overwrite an input."""
  writers: dict[str, str] = {}
  clashes: dict[tuple[str, str], str] = {}  # (first input, second input) -> the first file both would write
  for name, stem in zip(names, stems):
    for file in _output_names(stem, labelled):
      if file in writers:
        clashes.setdefault((writers[file], name), file)
      writers.setdefault(file, name)
  problems = [f'{first} and {second} would both write {out / file}' for (first, second), file in clashes.items()]
  inputs = {str(_absolute(name)) for name in names if _local(name)}
  problems += [f'{out / file} would overwrite the input {out / file}'
               for file in writers if str(_absolute(out / file)) in inputs]
  if problems:
    shown = '\n  '.join(problems[:10]) + (f'\n  ... and {len(problems) - 10} more' if len(problems) > 10 else '')
    raise DataError(f'{len(problems)} output name clash(es):\n  {shown}\nOutputs are named after the input file '
                    'stems: rename or move the inputs, or write to another --output folder.')


def cityscapes_label_ids(train_ids: np.ndarray) -> np.ndarray:
  """uint8 Cityscapes labelIds of train ids 0..18 (7, 8, 11, 12, 13, 17, 19, ..., 33), any shape."""
  lut = np.zeros(256, np.uint8)
  lut[:len(cityscapes.TRAIN_TO_RAW_ID)] = cityscapes.TRAIN_TO_RAW_ID
  return lut[train_ids]


def _check_label_format(label_format: str, info: DatasetInfo) -> None:
  if label_format not in LABEL_FORMATS:
    raise ConfigError(f'--label_format={label_format!r}; choose one of {list(LABEL_FORMATS)}')
  if label_format == 'cityscapes_label_ids' and tuple(info.class_names) != cityscapes.CLASS_NAMES:
    raise ConfigError(f'--label_format=cityscapes_label_ids writes Cityscapes labelIds and needs a model of the 19 '
                      f'Cityscapes classes (data.name cityscapes or cityscapes_tfds); this config predicts the '
                      f'{info.num_classes} classes of {info.name!r}: use --label_format=palette')


def _png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def label_png(prediction: np.ndarray, info: DatasetInfo, label_format: str) -> bytes:
  """PNG bytes of uint8 (H, W) predicted class ids: mode P with the dataset palette (pixel values = class ids), or
  for 'cityscapes_label_ids' mode L of the labelIds."""
  if label_format == 'cityscapes_label_ids':
    return _png(Image.fromarray(cityscapes_label_ids(prediction)))
  image = Image.fromarray(prediction)
  image.putpalette(label_palette(info))  # mode L -> P, the values kept
  return _png(image)


def _colours(info: DatasetInfo) -> np.ndarray:
  """uint8 (256, 3): each class id's colour, the ignore colour at ignore_index."""
  return np.asarray(label_palette(info), np.uint8).reshape(256, 3)


def overlay(image: np.ndarray, prediction: np.ndarray, colours: np.ndarray) -> Image.Image:
  """The prediction's colours over a uint8 (H, W, 3) image, blended with alpha OVERLAY_ALPHA."""
  return Image.blend(Image.fromarray(image), Image.fromarray(colours[prediction]), OVERLAY_ALPHA)


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
  except (TypeError, OSError, ImportError):
    return ImageFont.load_default()


def compare(image: np.ndarray, prediction: np.ndarray, label: np.ndarray, colours: np.ndarray,
            title: str) -> Image.Image:
  """Image | prediction | ground truth (uint8 (H, W, 3), (H, W), (H, W)) side by side, each panel named, under a
  title line; PIL's default font, scaled with the image (12 to 48 px)."""
  height, width = image.shape[:2]
  size = max(12, min(48, width // 24))
  font = _font(size)
  gap, line = max(2, size // 3), size + size // 2
  titles = ('image', 'prediction', 'ground truth')
  measure = ImageDraw.Draw(Image.new('RGB', (1, 1))).textlength
  slot = max(width, *(int(math.ceil(measure(name, font=font))) + gap for name in titles)) + gap
  canvas = Image.new('RGB', (max(3 * slot - gap, int(math.ceil(measure(title, font=font))) + 2 * gap),
                             2 * line + height), 'white')
  draw = ImageDraw.Draw(canvas)
  draw.text((gap, (line - size) // 2), title, fill='black', font=font)
  for panel, (name, pixels) in enumerate(zip(titles, (image, colours[prediction], colours[label]))):
    draw.text((panel * slot + gap, line + (line - size) // 2), name, fill='black', font=font)
    canvas.paste(Image.fromarray(pixels), (panel * slot, 2 * line))
  return canvas


def image_scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
  """{'miou': mIoU over the classes present in the label or the prediction, 'iou/<class>': ...} in percent from one
  image's (K, K) confusion matrix (NaN where undefined)."""
  result = metrics.segmentation_metrics(confusion, class_names, 'present')
  return {'miou': result['miou_present'], **{f'iou/{name}': result[f'iou/{name}'] for name in class_names}}


class _PerImageCsv:
  """per_image.csv: rows by name, read back when resuming (a torn last line is dropped), rewritten atomically with
  the rows of `order` first, in that order."""

  def __init__(self, path: epath.Path, class_names: Sequence[str], order: Sequence[str]):
    self.path, self._ranks = path, {name: rank for rank, name in enumerate(order)}
    self.header = ['name', 'image', 'miou'] + [f'iou/{name}' for name in class_names]
    self.rows: dict[str, list[str]] = {}
    self._dirty, self._last_flush = False, time.monotonic()
    if path.exists():
      lines = list(csv.reader(io.StringIO(path.read_text())))
      if lines and lines[0] == self.header:
        self.rows = {row[0]: row for row in lines[1:] if len(row) == len(self.header)}

  def add(self, name: str, image: str, scores: dict[str, float]) -> None:
    self.rows[name] = [name, image] + [_number(scores[key]) for key in self.header[2:]]
    self._dirty = True

  def flush(self, force: bool = False) -> None:
    """Rewrites the file when rows changed, at most every _CSV_FLUSH_EVERY_S seconds unless `force`."""
    if not self._dirty or (not force and time.monotonic() - self._last_flush < _CSV_FLUSH_EVERY_S):
      return
    names = sorted(self.rows, key=lambda name: (self._ranks.get(name, len(self._ranks)), name))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(self.header)
    writer.writerows(self.rows[name] for name in names)
    storage.write_atomic(self.path, buffer.getvalue().encode())
    self._dirty, self._last_flush = False, time.monotonic()


def _number(value: float) -> str:
  return '' if math.isnan(value) else f'{value:.2f}'


@dataclasses.dataclass(frozen=True)
class _Writer:
  """What writing one image's files needs (see write_image)."""
  out: epath.Path
  source: Any
  info: DatasetInfo
  label_format: str
  labelled: bool

  def write_image(self, stem: str, index: int, prediction: np.ndarray, scores: dict[str, float] | None) -> None:
    """Writes the files of sample `index` of the source from its uint8 (Lh, Lw) padded prediction (the top-left
    original-size region is the image's); the image (and label) are read again from the source."""
    sample = self.source[index]
    image = sample['image']
    height, width = image.shape[:2]
    prediction = np.ascontiguousarray(prediction[:height, :width])
    colours = _colours(self.info)
    outputs = {f'{stem}.png': label_png(prediction, self.info, self.label_format),
               f'{stem}_overlay.jpg': _jpeg(overlay(image, prediction, colours))}
    if self.labelled:
      miou = scores['miou']
      title = f'{stem}   mIoU ' + ('n/a (no labelled pixel)' if math.isnan(miou) else f'{miou:.2f}')
      outputs[f'{stem}_compare.png'] = _png(compare(image, prediction, sample['label'], colours, title))
    for name, data in outputs.items():
      storage.write_atomic(self.out / name, data)


class _Progress:
  """A console line (process 0) at every tenth of the images and at the end: count, rate, time left."""

  def __init__(self, total: int):
    self.total, self.done, self._tenth, self._start = total, 0, 0, time.time()

  def update(self, done: int) -> None:
    self.done = done
    tenth = self.done * 10 // max(self.total, 1)
    if tenth > self._tenth or self.done >= self.total:
      self._tenth = tenth
      elapsed = time.time() - self._start
      rate = self.done / elapsed if elapsed > 0 else 0.0
      left = (self.total - self.done) / rate if rate > 0 else 0.0
      reporting.console(f'predicted {self.done}/{self.total} images, {rate:.1f} images/s, {left:.0f}s left')


def _process_rows(*arrays: jax.Array) -> list[np.ndarray]:
  """This process's rows of arrays sharded on the batch axis, as host arrays in one order shared by all."""
  rows = []
  for array in arrays:
    shards = sorted(array.addressable_shards, key=lambda shard: shard.index[0].start or 0)
    rows.append(np.concatenate([np.asarray(shard.data) for shard in shards]))
  return rows


def _from_process_0(flags: np.ndarray) -> np.ndarray:
  """Process 0's bool `flags` on every process (what it sees of the shared output folder decides for all)."""
  if jax.process_count() == 1:
    return flags
  return np.asarray(multihost_utils.broadcast_one_to_all(flags.astype(np.int32))).astype(bool)


def _check_manifest(out: epath.Path, manifest: dict) -> None:
  """Refuses to add to a folder written from another checkpoint or label format; writes the manifest."""
  path = out / MANIFEST_FILE
  if path.exists():
    previous = json.loads(path.read_text())
    changed = [key for key in ('checkpoints', 'step', 'label_format') if previous.get(key) != manifest[key]]
    if changed:
      raise DataError(
          f'{out} holds predictions written with ' + ', '.join(f'{key} {previous.get(key)!r}' for key in changed)
          + '; this run has ' + ', '.join(f'{key} {manifest[key]!r}' for key in changed)
          + f'. Write to another --output, or delete {path} to add to those files anyway.')
  elif jax.process_index() == 0:
    storage.write_atomic(path, (json.dumps(manifest, indent=2) + '\n').encode())


def predict(config: ml_collections.ConfigDict, workdir: str | epath.Path, output: str | epath.PathLike, *,
            input_path: str | None = None, step: int | None = None, label_format: str = 'palette',
            devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """Writes the predictions of checkpoint `step` (default: the latest) of `workdir` for the images `input_path`
  names (see list_images), or without it for config.data.eval_split with its labels, under `output` (see the
  module docstring).

  Returns {'step': the checkpoint step, 'predicted': the stems run now, 'skipped': the stems already complete,
  'output': the folder}.
  """
  exp = experiment.build(config, devices)
  info = exp.info
  if info.task == 'classification':
    raise ConfigError(f'--mode predict writes label maps; data.name={config.data.name!r} is a classification '
                      'dataset: evaluate its checkpoints with --mode eval (top-1 accuracy per class)')
  _check_label_format(label_format, info)
  parallel.per_process_batch_size(config.eval.batch_size, exp.mesh, 'eval.batch_size')
  out = epath.Path(output)
  labelled = input_path is None
  if labelled:
    source = datasets.build_source(config.data, config.data.eval_split)
    where = f'{info.name}/{config.data.eval_split}'
  else:
    if epath.Path(input_path).is_dir() and _absolute(input_path) == _absolute(out):
      raise DataError(f'--output {output} is the --input folder; write the predictions to another folder (a '
                      'sub-folder of the input is left out of it)')
    source = ImageFileSource(list_images(input_path, exclude=out))
    where = input_path
  names = [source.sample_name(i) for i in range(len(source))]
  stems = [output_stem(name) for name in names]
  _check_names(names, stems, labelled, out)

  restored_step, variables = evaluate.restore_variables(exp, workdir, step)
  storage.check_writable(out, 'output folder')  # creates it
  _check_manifest(out, {'checkpoints': str(checkpoint_dir(workdir)), 'step': restored_step,
                        'label_format': label_format, 'config': config.name})
  table = _PerImageCsv(out / CSV_FILE, info.class_names, stems) if labelled else None
  existing = {path.name for path in out.iterdir()}  # one listing, not a request per file (gs://)
  done = np.asarray([all(name in existing for name in _output_names(stem, labelled))
                     and (table is None or stem in table.rows) for stem in stems], bool)
  done = _from_process_0(done)
  todo = [i for i in range(len(source)) if not done[i]]
  reporting.console(f'Predicting {len(todo)} of {len(source)} images of {where} with checkpoint step '
                    f'{restored_step} of {checkpoint_dir(workdir)} into {out}'
                    + (f' ({len(source) - len(todo)} already there)' if len(todo) < len(source) else ''))
  if todo:
    writer = _Writer(out, source, info, label_format, labelled)
    try:
      _run(exp, variables, _Subset(source, todo), [stems[i] for i in todo], todo, writer, table)
    finally:
      if table is not None and jax.process_index() == 0:
        table.flush(force=True)
  if table is not None:
    values = [float(table.rows[stem][2]) for stem in stems if stem in table.rows and table.rows[stem][2]]
    if values:
      reporting.console(f'per-image mIoU in {out / CSV_FILE}: mean {np.mean(values):.2f} over {len(values)} images '
                        '(a mean of per-image scores; the split\'s mIoU is --mode eval\'s)')
  reporting.console(f'Wrote the predictions of {len(todo)} images to {out}')
  return {'step': restored_step, 'predicted': [stems[i] for i in todo],
          'skipped': [stem for stem, skip in zip(stems, done) if skip], 'output': str(out)}


def write_per_image_results(exp: experiment.Experiment, variables: dict, source, image_confusions: dict,
                            output: str | epath.PathLike, worst: int = 0) -> None:
  """`--mode eval --output OUT [--worst N]`: OUT/per_image.csv with every image of the split (the columns of
  --mode predict's, from each image's (K, K) confusion matrix, `image_confusions` by split index), and the
  predictions of the `worst` images of lowest mIoU (images without a labelled pixel left out): the files --mode
  predict writes for a labelled image, named worst<rank>_<stem>."""
  out, info = epath.Path(output), exp.info
  names = [source.sample_name(i) for i in range(len(source))]
  stems = [output_stem(name) for name in names]
  _check_names(names, stems, True, out)
  scores = {i: image_scores(matrix, info.class_names) for i, matrix in image_confusions.items()}
  if jax.process_index() == 0:
    table = _PerImageCsv(out / CSV_FILE, info.class_names, stems)
    table.rows = {}  # this evaluation's rows only
    for i in sorted(scores):
      table.add(stems[i], names[i], scores[i])
    table.flush(force=True)
    reporting.console(f'Per-image scores of {len(scores)} images in {out / CSV_FILE}')
  ranked = sorted((i for i in scores if not math.isnan(scores[i]['miou'])), key=lambda i: (scores[i]['miou'], i))
  ranked = ranked[:worst]
  if ranked:
    digits = len(str(len(ranked)))
    worst_stems = [f'worst{rank + 1:0{digits}d}_{stems[i]}' for rank, i in enumerate(ranked)]
    _run(exp, variables, _Subset(source, ranked), worst_stems, ranked, _Writer(out, source, info, 'palette', True),
         None)
    reporting.console(f'Wrote the predictions of the {len(ranked)} images of lowest mIoU to {out} '
                      f'({worst_stems[0]}_compare.png ...)')


def _run(exp: experiment.Experiment, variables: dict, todo_source: _Subset, todo_stems: list[str],
         todo: list[int], writer: _Writer, table: _PerImageCsv | None) -> None:
  """Predicts `todo_source` in eval batches, the device one batch ahead of the host that writes the results."""
  config = exp.config
  batches, _ = pipeline.eval_batches(todo_source, config.data, config.eval.batch_size, eval_config=config.eval)
  progress = _Progress(len(todo))
  futures: list[concurrent.futures.Future] = []
  pool = concurrent.futures.ThreadPoolExecutor(_WRITER_THREADS)

  def finish(batch_number: int, index: jax.Array, predictions: jax.Array, scored: dict | None) -> None:
    """Queues the writes of this process's images of a batch and adds every image's row to the table."""
    scores = {}
    if scored is not None:
      confusion, global_index = (np.asarray(scored[key].addressable_data(0)) for key in ('confusion', 'index'))
      for i, matrix in zip(global_index.tolist(), confusion):
        if i < len(todo):
          scores[i] = image_scores(matrix, exp.info.class_names)
          if table is not None and jax.process_index() == 0:
            table.add(todo_stems[i], todo_source.sample_name(i), scores[i])
    local_index, local_predictions = _process_rows(index, predictions)
    for i, prediction in zip(local_index.tolist(), local_predictions):
      if i < len(todo):  # the rest pads the last batch
        futures.append(pool.submit(writer.write_image, todo_stems[i], todo[i], prediction.astype(np.uint8),
                                   scores.get(i)))
    while len(futures) > 2 * config.eval.batch_size:  # bounded: the host keeps up with the device
      futures.pop(0).result()
    for future in [f for f in futures if f.done()]:
      futures.remove(future)
      future.result()  # raises a failed write
    if table is not None and jax.process_index() == 0:
      table.flush()
    progress.update(min((batch_number + 1) * config.eval.batch_size, len(todo)))

  try:
    pending = None
    for batch_number, host_batch in enumerate(batches):
      batch = parallel.to_global(host_batch, exp.mesh)
      predictions = exp.predict_step(variables, batch)
      scored = (exp.image_confusion_step(predictions, batch['label'], batch['index'])
                if writer.labelled else None)
      if pending is not None:
        finish(*pending)
      pending = (batch_number, batch['index'], predictions, scored)
    if pending is not None:
      finish(*pending)
    for future in futures:
      future.result()
  finally:
    batches.close()
    pool.shutdown(wait=True)

