"""Output parity of imported weights at full width: PyTorch modules in the published layouts, random weights.

  python bench/weight_parity.py --out FILE [--size 64] [--cases resnet50_v1c resnet50s hrnetv2_w18 ...]

Each case builds a PyTorch module in a published key layout (bench/torch_reference.py) at its published size, fills
it with random weights and BatchNorm statistics (`randomize_`), saves its state dict as a .pth, imports that file
into the ctxseg_jax model of the same architecture (ctxseg_jax.weights; the layout detected from the keys) and
compares eval-mode outputs on two random normalised HxH images: the four stage outputs of a backbone, or the logits
of a whole model. It prints and writes the max relative error of each output, max |ours - torch| / max |torch|.

  resnet50_v1c   mmseg ResNetV1c-50 (open-mmlab://resnet50_v1c layout: stem.N, fc), output stride 8.
  resnet50s      PyTorch-Encoding resnet50s (conv1.N + bn1, fc), output stride 8.
  hrnetv2_w18    HRNetV2-W18 in the ImageNet layout (conv1/bn1, layer1, transitionK, stageK).
  encnet_pte     configs/encnet_pcontext.py's EncNet (resnet50s, lateral, SE layer, aux FCN) as PyTorch-Encoding
                 saves it (pretrained., head., auxlayer.), 59 classes.
  encnet_mmseg   configs/encnet_cityscapes.py's EncNet (ResNetV1c-50) as mmseg saves it ({'state_dict', 'meta'}),
                 19 classes.
  ocrnet_hrnet_ocr  configs/ocrnet_hr48_cityscapes.py's OCRNet (HRNetV2-W48) as HRNet-OCR releases it (FullModel:
                 model., loss.), 19 classes.
  ocrnet_mmseg   configs/ocrnet_hr48_cityscapes_mmseg.py's OCRNet (HRNetV2-W48) as mmseg saves it
                 (CascadeEncoderDecoder: decode_head.0, decode_head.1), 19 classes.

The helpers (`relative_error`, `variable_shapes`, `import_backbone`) are also the parity tests' (tests/test_weights.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from bench import torch_reference as ref  # noqa: E402
from bench.harness import load_config  # noqa: E402
from ctxseg_jax.models import build_model  # noqa: E402
from ctxseg_jax.models.backbones import BACKBONES  # noqa: E402
from ctxseg_jax.weights import convert, pretrained  # noqa: E402

# whole-model case -> (layout, shipped config, classes)
WHOLE_MODELS = {'encnet_pte': ('pte', 'encnet_pcontext', 59), 'encnet_mmseg': ('mmseg', 'encnet_cityscapes', 19),
                'ocrnet_hrnet_ocr': ('hrnet_ocr', 'ocrnet_hr48_cityscapes', 19),
                'ocrnet_mmseg': ('mmseg_cascade', 'ocrnet_hr48_cityscapes_mmseg', 19)}
CASES = ('resnet50_v1c', 'resnet50s', 'hrnetv2_w18', *WHOLE_MODELS)


def relative_error(ours, theirs) -> float:
  """max |ours - theirs| / max |theirs|."""
  theirs = np.asarray(theirs)
  return float(np.max(np.abs(np.asarray(ours) - theirs)) / np.max(np.abs(theirs)))


def images(size: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
  """Two random normalised images: (NHWC numpy, the same NCHW torch)."""
  x = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)
  return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def variable_shapes(model, size: int = 64) -> dict[str, tuple[int, ...]]:
  """{flattened path: shape} of the model's variables (training-only heads included), without computing them."""
  return pretrained.shapes(jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, jnp.zeros((1, size, size, 3)), train=True)))


def nhwc(outputs) -> list[np.ndarray]:
  return [y.detach().numpy().transpose(0, 2, 3, 1) for y in outputs]


def import_backbone(path: str, model_config, x: np.ndarray, num_classes: int = 5):
  """(Imported, the backbone's stage outputs on `x`) for the backbone of config.model `model_config` with the
  weights of the file at `path` (eval mode)."""
  model = build_model(model_config, num_classes)
  result = pretrained.load(str(path), model_config, variable_shapes(model))
  variables = convert.unflatten(result.variables)
  outputs = jax.jit(lambda v, x: model.backbone.apply(v, x, train=False))(
      {'params': variables['params']['backbone'], 'batch_stats': variables['batch_stats']['backbone']}, x)
  return result, outputs


def import_model(path: str, model_config, num_classes: int, x: np.ndarray):
  """(Imported, eval logits (B, h, w, K) on `x`) of the model of `model_config` with the file's weights."""
  model = build_model(model_config, num_classes)
  result = pretrained.load(str(path), model_config, variable_shapes(model))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False)['logits'])(convert.unflatten(result.variables), x)
  return result, logits


def _shipped_model(name: str):
  return load_config(f'configs/{name}.py').model


def run_case(case: str, size: int, directory: str) -> dict[str, float]:
  """{output name: max relative error} of one case."""
  path = os.path.join(directory, f'{case}.pth')
  x, x_torch = images(size)
  if case in ('resnet50_v1c', 'resnet50s', 'hrnetv2_w18'):
    model_config = _shipped_model('encnet_cityscapes')
    if case == 'hrnetv2_w18':
      torch_model = ref.HRNet(18)
      model_config.backbone = BACKBONES.config('hrnet', width=18)
      model_config.heads.decode_head.reads = (3,)
    else:
      stem = 'v1c' if case == 'resnet50_v1c' else 's'
      torch_model = ref.ResNet(50, stem, 64, layout='mmseg' if stem == 'v1c' else 'torch')
      model_config.backbone = BACKBONES.config('resnet', depth=50, stem=stem)
    state = ref.randomize_(torch_model).eval().state_dict()
    if case != 'hrnetv2_w18':  # the ImageNet classifier, which the import drops
      state.update({'fc.weight': torch.zeros(1000, 2048), 'fc.bias': torch.zeros(1000)})
    torch.save(state, path)
    _, ours = import_backbone(path, model_config, x)
    with torch.no_grad():
      theirs = nhwc(torch_model(x_torch))
    return {f'stage{i + 1}': relative_error(a, b) for i, (a, b) in enumerate(zip(ours, theirs))}
  layout, shipped, num_classes = WHOLE_MODELS[case]
  model_config = _shipped_model(shipped)
  torch_model = ref.randomize_(ref.build_model(model_config.to_dict(), num_classes, layout=layout)).eval()
  state = torch_model.state_dict()
  torch.save({'state_dict': state, 'meta': {}} if layout.startswith('mmseg') else state, path)
  _, ours = import_model(path, model_config, num_classes, x)
  with torch.no_grad():
    theirs = nhwc([torch_model(x_torch)['logits']])[0]
  return {'logits': relative_error(ours, theirs)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='JSON file to write')
  parser.add_argument('--size', type=int, default=64, help='input height and width')
  parser.add_argument('--cases', nargs='+', default=list(CASES), choices=CASES)
  args = parser.parse_args()
  results = {}
  with tempfile.TemporaryDirectory() as directory:
    for case in args.cases:
      results[case] = run_case(case, args.size, directory)
      print(f'{case:16s} ' + '  '.join(f'{name} {error:.2e}' for name, error in results[case].items()), flush=True)
  with open(args.out, 'w') as f:
    json.dump({'size': args.size, 'max_relative_error': results}, f, indent=1)


if __name__ == '__main__':
  main()
