"""Reading published checkpoints into flat {key: numpy array} state dicts.

PyTorch .pth/.pt files are read with torch.load(weights_only=True): tensors, containers and plain values only,
never arbitrary pickled objects (unpickling runs code). torch is an optional extra (pip install -e '.[torch]').
.safetensors files are parsed here with numpy (an 8-byte header length, a JSON header, raw little-endian data), so
they need no extra package.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import struct
from typing import Any

import ml_dtypes
import numpy as np

TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')
SAFETENSORS_SUFFIX = '.safetensors'
# Containers a state dict is found in: mmseg/mmcv {'state_dict', 'meta'}, HRNet-OCR and others {'model'}.
_WRAPPERS = ('state_dict', 'model', 'module')
_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}


class WeightsFileError(ValueError):
  """A weights file that cannot be read, or holds no state dict; the message names the file and the fix."""


def sha256(path: str | pathlib.Path) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{key: float32/int array} of a .pth/.pt (PyTorch) or .safetensors file.

  A checkpoint that wraps its state dict ({'state_dict': ..., 'meta': ...}, {'model': ...}) is unwrapped, and a
  'module.' prefix left by DataParallel is removed. Raises WeightsFileError for a missing or unreadable file, a
  PyTorch file that needs full unpickling, or one without tensors.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightsFileError(f'weights file {path} does not exist')
  if path.suffix == SAFETENSORS_SUFFIX:
    state = read_safetensors(path)
  elif path.suffix in TORCH_SUFFIXES:
    state = _unwrap(_torch_load(path), path)
  else:
    raise WeightsFileError(f'{path}: unknown weights format {path.suffix!r}; expected a PyTorch file '
                           f'({", ".join(TORCH_SUFFIXES)}) or {SAFETENSORS_SUFFIX}')
  if not state:
    raise WeightsFileError(f'{path} holds no tensors')
  if all(key.startswith('module.') for key in state):
    state = {key[len('module.'):]: value for key, value in state.items()}
  return state


def _torch_load(path: pathlib.Path) -> Any:
  try:
    import torch
  except ImportError:
    raise WeightsFileError(f'reading {path} needs PyTorch: pip install -e ".[torch]" (a CPU build is enough), or '
                           'convert the file to .safetensors') from None
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, pickle.UnpicklingError) or 'weights_only' in str(e):
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise WeightsFileError(
          f'refusing {path}: it holds pickled Python objects beyond tensors and containers, and unpickling them '
          f'would run arbitrary code (torch.load(weights_only=True) says: {reason}). Re-save only its state dict '
          'from a trusted PyTorch session: torch.save(torch.load(f, weights_only=False)["state_dict"], out)') from None
    raise WeightsFileError(f'{path} is not a readable PyTorch file: {type(e).__name__}: {e}') from None


def _unwrap(loaded: Any, path: pathlib.Path) -> dict[str, np.ndarray]:
  """The flat {key: array} of a loaded PyTorch object: a state dict, or one inside a wrapper dict."""
  if not isinstance(loaded, dict):
    raise WeightsFileError(f'{path} holds a {type(loaded).__name__}, not a state dict')
  for wrapper in _WRAPPERS:
    if isinstance(loaded.get(wrapper), dict):
      loaded = loaded[wrapper]
      break
  state = {}
  for key, value in loaded.items():
    if hasattr(value, 'detach'):  # a torch.Tensor
      value = value.detach().cpu()
      if str(value.dtype) == 'torch.bfloat16':
        value = value.float()
      state[key] = value.numpy()
  return state


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{name: array} of a .safetensors file (header metadata ignored); arrays are copies, in native byte order."""
  path = pathlib.Path(path)
  data = path.read_bytes()
  try:
    (header_size,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + header_size])
  except (struct.error, ValueError) as e:
    raise WeightsFileError(f'{path} is not a safetensors file (bad header: {e})') from None
  base = 8 + header_size
  state = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    if entry['dtype'] not in _SAFETENSORS_DTYPES:
      raise WeightsFileError(f'{path}: tensor {name!r} has dtype {entry["dtype"]}, which is not supported')
    begin, end = entry['data_offsets']
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry['dtype']]).newbyteorder('<')
    array = np.frombuffer(data[base + begin:base + end], dtype=dtype).reshape(entry['shape'])
    state[name] = array.astype(array.dtype.newbyteorder('='))
  return state


def write_safetensors(path: str | pathlib.Path, state: dict[str, np.ndarray]) -> None:
  """Writes {name: array} as a .safetensors file (the inverse of read_safetensors; dtypes in _SAFETENSORS_DTYPES)."""
  names = {np.dtype(dtype): name for name, dtype in _SAFETENSORS_DTYPES.items()}
  header, chunks, offset = {}, [], 0
  for name, array in state.items():
    array = np.ascontiguousarray(array)
    raw = array.astype(array.dtype.newbyteorder('<')).tobytes()
    header[name] = {'dtype': names[array.dtype], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  encoded = json.dumps(header).encode()
  encoded += b' ' * (-len(encoded) % 8)
  pathlib.Path(path).write_bytes(struct.pack('<Q', len(encoded)) + encoded + b''.join(chunks))
