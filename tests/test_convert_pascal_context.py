"""Tests for the PASCAL-Context converter: RLE decoding, the class mask, the written files and the errors."""
from __future__ import annotations

import json
import pathlib
import re

import numpy as np
from PIL import Image
import pytest

from ctxseg_jax.data import convert_pascal_context as cpc
from ctxseg_jax.data.datasets.base import DataError

# mmseg's `_mapping` before sorting, written out here so the expected labels do not come from the module.
MMSEG_IDS = [0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454,
             295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355,
             85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]


def _rank(category_id: int) -> int:
  return sorted(MMSEG_IDS).index(category_id)


# --- a plain reference encoder --------------------------------------------------------------------------------

def _runs(mask: np.ndarray) -> list[int]:
  """Run lengths over the pixels taken column by column, starting with a (possibly empty) run of zeros."""
  h, w = mask.shape
  runs, current, length = [], 0, 0
  for x in range(w):
    for y in range(h):
      pixel = int(bool(mask[y, x]))
      if pixel == current:
        length += 1
      else:
        runs.append(length)
        current, length = pixel, 1
  runs.append(length)
  return runs


def _compress(runs: list[int]) -> str:
  """COCO's string form: from the 4th count on, store the difference to the count two back; write each number as
  5-bit groups, low first, as chr(48 + group), with 0x20 set while more groups follow; stop once the remaining
  bits are all copies of the last group's sign bit (0x10)."""
  out = []
  for i, count in enumerate(runs):
    value = count - runs[i - 2] if i > 2 else count
    while True:
      group = value & 0x1f
      value >>= 5
      more = value != (-1 if group & 0x10 else 0)
      out.append(chr(48 + group + (0x20 if more else 0)))
      if not more:
        break
  return ''.join(out)


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
  runs = _runs(mask)
  return {'size': list(mask.shape), 'counts': _compress(runs) if compressed else runs}


def _from_runs(runs: list[int], shape: tuple[int, int]) -> np.ndarray:
  flat = np.concatenate([np.full(n, i % 2, np.uint8) for i, n in enumerate(runs)])
  return flat.reshape(shape[1], shape[0]).T


def _random_masks():
  rng = np.random.default_rng(0)
  for shape in [(1, 1), (1, 9), (9, 1), (13, 17), (40, 31), (64, 48)]:
    for density in (0.05, 0.5, 0.95):
      yield rng.random(shape) < density
    blocks = rng.random((max(1, shape[0] // 4), max(1, shape[1] // 4))) < 0.5
    yield np.kron(blocks, np.ones((4, 4), bool))[:shape[0], :shape[1]]


def _edge_masks():
  yield np.zeros((5, 4), bool)
  yield np.ones((5, 4), bool)
  starts_with_one = np.zeros((6, 3), bool)
  starts_with_one[:2, 0] = True
  yield starts_with_one
  # Long runs: counts above 2**16 need four and more 5-bit groups, and the differences go negative.
  yield _from_runs([70000, 40000, 3, 5, 1, 9991], (300, 400)).astype(bool)
  yield _from_runs([0, 100000, 19999, 1], (300, 400)).astype(bool)
  yield _from_runs([1, 2, 70000, 1, 65536, 3, 4, 1, 3952], (100, 1395)).astype(bool)


@pytest.mark.parametrize('compressed', [True, False])
def test_decode_matches_reference_encoder(compressed):
  masks = list(_random_masks()) + list(_edge_masks())
  for mask in masks:
    decoded = cpc.decode_rle(_rle(mask, compressed))
    assert decoded.shape == mask.shape and decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask)


def test_string_counts_round_trip_and_bytes():
  for mask in _edge_masks():
    runs = _runs(mask)
    text = _compress(runs)
    assert cpc.string_counts(text).tolist() == runs
    assert cpc.string_counts(text.encode()).tolist() == runs
  long_text = _compress([70000, 40000, 3, 5])
  assert len(long_text) == 13  # four groups each for 70000, 40000 and the difference 5 - 40000; one for 3


def test_decode_hand_worked_string():
  # 50 = 0b1_10010: low group 18 (0x10 set, so a second group follows: '0' + 18 + 0x20 = 'b'), then '1'.
  np.testing.assert_array_equal(cpc.decode_rle({'size': [5, 10], 'counts': '0b1'}), np.ones((5, 10), bool))
  expected = np.zeros((2, 3), bool)
  expected[1, 0] = expected[0, 1] = True  # runs 1, 2, 3 in column-major order
  np.testing.assert_array_equal(cpc.decode_rle({'size': [2, 3], 'counts': '123'}), expected)


@pytest.mark.parametrize('rle, message', [
    ({'size': [2, 3], 'counts': '12'}, 'add up to 3 pixels'),
    ({'size': [2, 3], 'counts': [1, 2, 4]}, 'add up to 7 pixels'),
    ({'size': [2, 3], 'counts': '1 23'}, 'outside the alphabet'),
    ({'size': [2, 3], 'counts': '1b'}, 'truncated'),
    ({'size': [2, 3], 'counts': [3, -1, 4]}, 'negative'),
    ({'size': [2], 'counts': '6'}, "'size'"),
    ({'counts': '6'}, "'size' and 'counts'"),
])
def test_decode_errors(rle, message):
  with pytest.raises(ValueError, match=message):
    cpc.decode_rle(rle)


def test_to_context_ids():
  assert list(cpc.CONTEXT_IDS) == sorted(MMSEG_IDS) and len(set(MMSEG_IDS)) == 60
  ids = np.array(sorted(MMSEG_IDS)).reshape(6, 10)
  np.testing.assert_array_equal(cpc.to_context_ids(ids), np.arange(60).reshape(6, 10))
  assert cpc.to_context_ids(ids).dtype == np.uint8
  assert cpc.to_context_ids(ids.astype(np.float64))[5, 9] == 59  # the Detail API's masks are float
  with pytest.raises(DataError, match=r'image 2008_000123: category id\(s\) \[-3, 1, 459\]'):
    cpc.to_context_ids(np.array([[0, 1, 459], [-3, 2, 9]]), where='image 2008_000123')


# --- a synthetic trainval_merged.json -------------------------------------------------------------------------

def _rect(shape, rows, cols):
  mask = np.zeros(shape, bool)
  mask[rows[0]:rows[1], cols[0]:cols[1]] = True
  return mask


def _dataset():
  """Four images (train, val, train without annotations, test) and annotations listed out of image order."""
  rng = np.random.default_rng(1)
  shapes = {1: (6, 8), 2: (5, 7), 3: (4, 4), 4: (3, 3)}
  images = [
      {'image_id': 2008000001, 'file_name': '2008_000001.jpg', 'height': 6, 'width': 8, 'phase': 'train'},
      {'image_id': 2008000002, 'file_name': '2008_000002.jpg', 'height': 5, 'width': 7, 'phase': 'val'},
      {'image_id': 2009000003, 'file_name': '2009_000003.jpg', 'height': 4, 'width': 4, 'phase': 'train'},
      {'image_id': 2010000004, 'file_name': '2010_000004.jpg', 'height': 3, 'width': 3, 'phase': 'test',
       'date_captured': '2010'},
  ]
  image_ids = {i + 1: image['image_id'] for i, image in enumerate(images)}
  # (annotation id, image number, category id, mask, compressed): painted in this order per image.
  plan = [
      (10, 1, 2, _rect(shapes[1], (0, 4), (0, 5)), True),
      (5, 2, 458, rng.random(shapes[2]) < 0.5, False),
      (11, 1, 400, _rect(shapes[1], (4, 6), (5, 8)), True),  # not a context id, but fully covered by 3 below
      (3, 1, 259, _rect(shapes[1], (2, 6), (3, 8)), True),
      (7, 2, 9, _rect(shapes[2], (2, 4), (0, 4)), True),
      (8, 1, 440, rng.random(shapes[1]) < 0.3, True),
      (2, 4, 2, np.ones(shapes[4], bool), True),
      (1, 2, 2, rng.random(shapes[2]) < 0.2, True),
  ]
  annotations = [{'id': ann_id, 'image_id': image_ids[number], 'category_id': category, 'area': int(mask.sum()),
                  'iscrowd': 0, 'segmentation': _rle(mask, compressed)}
                 for ann_id, number, category, mask, compressed in plan]
  categories = [{'category_id': c, 'name': f'class{c}', 'supercategory': 'object'}
                for c in (2, 9, 259, 400, 440, 458)]
  data = {'info': {}, 'images': images, 'annos_segmentation': annotations, 'categories': categories,
          'parts': [], 'annos_occlusion': [], 'annos_boundary': [], 'annos_joints': []}
  expected = {}
  for number, image in enumerate(images, start=1):
    label = np.zeros(shapes[number], np.uint8)
    for _, n, category, mask, _ in plan:
      if n == number:
        label[mask] = _rank(category) if category in MMSEG_IDS else 255
    expected[image['file_name'][:-4]] = label
  return data, expected


def _write_json(tmp_path: pathlib.Path, data) -> pathlib.Path:
  path = tmp_path / 'trainval_merged.json'
  path.write_text(json.dumps(data))
  return path


@pytest.fixture
def voc_root(tmp_path):
  root = tmp_path / 'VOCdevkit' / 'VOC2010'
  (root / 'JPEGImages').mkdir(parents=True)
  return root


@pytest.mark.parametrize('workers', [1, 2])
def test_convert_end_to_end(tmp_path, voc_root, workers):
  data, expected = _dataset()
  summary = cpc.convert(_write_json(tmp_path, data), voc_root, workers)
  assert summary.counts == {'train': 2, 'val': 1}
  assert summary.skipped == {'test': 1}
  label_dir = voc_root / 'SegmentationClassContext'
  assert sorted(p.name for p in label_dir.iterdir()) == ['2008_000001.png', '2008_000002.png', '2009_000003.png']
  for stem in ('2008_000001', '2008_000002', '2009_000003'):
    with Image.open(label_dir / f'{stem}.png') as png:
      assert png.mode == 'L'
      written = np.array(png)
    np.testing.assert_array_equal(written, expected[stem], err_msg=stem)
  assert not (expected['2009_000003']).any()
  assert (expected['2008_000001'] != 255).all()  # the id-400 region was painted over entirely
  split_dir = voc_root / 'ImageSets' / 'SegmentationContext'
  assert (split_dir / 'train.txt').read_text() == '2008_000001\n2009_000003\n'
  assert (split_dir / 'val.txt').read_text() == '2008_000002\n'
  assert 'wrote 3 label PNGs (train 2, val 1)' in cpc.summary_text(summary)


def test_semantic_mask_paints_in_file_order_and_repeated_ids():
  data, expected = _dataset()
  # A repeated annotation id keeps the first one's position and the last one's record.
  replacement = dict(data['annos_segmentation'][0], category_id=9)
  data['annos_segmentation'].append(replacement)
  index = cpc.index_annotations(data)
  image = index.images[0]
  painted = index.annotations[image['image_id']]
  assert [a['id'] for a in painted] == [10, 11, 3, 8]
  mask = cpc.semantic_mask(image, painted)
  assert mask.shape == (6, 8)
  assert set(np.unique(mask).tolist()) <= {0, 9, 259, 440}
  first = _rect((6, 8), (0, 4), (0, 5))
  covered = np.zeros((6, 8), bool)
  for ann in data['annos_segmentation']:
    if ann['id'] in (3, 8):
      covered |= cpc.decode_rle(ann['segmentation'])
  assert (mask[first & ~covered] == 9).all()


def test_cli(tmp_path, voc_root, capsys):
  data, _ = _dataset()
  path = _write_json(tmp_path, data)
  assert cpc.main(['--json', str(path), '--root', str(voc_root), '--workers', '1']) == 0
  captured = capsys.readouterr()
  assert 'label PNGs: 3/3' in captured.err
  assert 'wrote 3 label PNGs' in captured.out and 'skipped images of other phases: test 1' in captured.out
  assert cpc.main(['--json', str(path), '--root', str(voc_root), '--workers', '1']) == 1
  assert '--overwrite' in capsys.readouterr().err
  assert cpc.main(['--json', str(path), '--root', str(voc_root), '--workers', '1', '--overwrite']) == 0


# --- errors ---------------------------------------------------------------------------------------------------

def test_missing_or_broken_json(tmp_path, voc_root):
  with pytest.raises(DataError, match=r'nope\.json does not exist; download trainval_merged\.json'):
    cpc.convert(tmp_path / 'nope.json', voc_root)
  broken = tmp_path / 'broken.json'
  broken.write_text('{"images": [')
  with pytest.raises(DataError, match=r'broken\.json is not valid JSON'):
    cpc.convert(broken, voc_root)


@pytest.mark.parametrize('key', ['images', 'annos_segmentation', 'categories'])
def test_missing_top_level_key(tmp_path, voc_root, key):
  data, _ = _dataset()
  del data[key]
  with pytest.raises(DataError, match=rf"trainval_merged\.json: no '{key}' key \(found keys \[.*'info'"):
    cpc.convert(_write_json(tmp_path, data), voc_root)


def test_record_without_phase(tmp_path, voc_root):
  data, _ = _dataset()
  del data['images'][1]['phase']
  with pytest.raises(DataError, match=r"images\[1\] has no 'phase' key"):
    cpc.convert(_write_json(tmp_path, data), voc_root)


def test_rle_size_disagrees_with_image(tmp_path, voc_root):
  data, _ = _dataset()
  data['annos_segmentation'][4]['segmentation'] = _rle(np.ones((4, 7), bool))
  with pytest.raises(DataError, match=r'image 2008_000002\.jpg \(image_id 2008000002\): annotation 7 has an RLE '
                                      r'mask of size 4x7 but the image is 5x7'):
    cpc.convert(_write_json(tmp_path, data), voc_root)
  assert not (voc_root / 'SegmentationClassContext').exists()  # found before anything is written


def test_category_outside_the_60(tmp_path, voc_root):
  data, _ = _dataset()
  data['annos_segmentation'][2]['segmentation'] = _rle(_rect((6, 8), (0, 6), (7, 8)))  # id 400 now survives
  with pytest.raises(DataError, match=r'image 2008_000001\.jpg \(image_id 2008000001\): category id\(s\) \[400\] '
                                      r'are not among the 60'):
    cpc.convert(_write_json(tmp_path, data), voc_root)


def test_category_not_listed_or_image_unknown(tmp_path, voc_root):
  data, _ = _dataset()
  data['annos_segmentation'][1]['category_id'] = 22
  with pytest.raises(DataError, match=r"image 2008_000002\.jpg .*annotation 5 has category_id 22, which is not "
                                      r"listed in 'categories'"):
    cpc.index_annotations(data)
  data, _ = _dataset()
  data['annos_segmentation'][1]['image_id'] = 1234
  with pytest.raises(DataError, match=r"annotation 5 refers to image_id 1234, which is not in 'images'"):
    cpc.index_annotations(data)


def test_output_root(tmp_path, voc_root):
  data, _ = _dataset()
  path = _write_json(tmp_path, data)
  missing = tmp_path / 'absent' / 'VOC2010'
  with pytest.raises(DataError, match=re.escape(f'output root {missing} does not exist; pass --root=')):
    cpc.convert(path, missing)
  with pytest.raises(DataError, match=re.escape(f'pass --root={voc_root}')):
    cpc.convert(path, voc_root.parent)


def test_existing_outputs_need_overwrite(tmp_path, voc_root):
  data, expected = _dataset()
  path = _write_json(tmp_path, data)
  cpc.convert(path, voc_root)
  (voc_root / 'SegmentationClassContext' / '2008_000002.png').unlink()
  with pytest.raises(DataError, match=r'4 output file\(s\) already exist.*pass --overwrite'):
    cpc.convert(path, voc_root)
  cpc.convert(path, voc_root, overwrite=True)
  with Image.open(voc_root / 'SegmentationClassContext' / '2008_000002.png') as png:
    np.testing.assert_array_equal(np.array(png), expected['2008_000002'])
