"""Weight import: PyTorch modules in the published layouts (bench/torch_reference.py), filled with random weights and
saved as their state dicts, import into our models and give the same eval-mode outputs."""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bench import torch_reference as ref
from bench.weight_parity import images, import_backbone, import_model, relative_error, variable_shapes
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.models import build_model
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import HEADS
from ctxseg_jax.weights import convert, layouts, pretrained, readers
from tests import shipped_configs
from tests.tiny_config import resnet50_encnet_model, tiny_model_config

RTOL = 1e-4  # max |ours - torch| / max |torch|, per output


def init_variables(model, size=64):
  """Our variables (train=True init, training-only heads included) for (1, size, size, 3) inputs."""
  return jax.jit(lambda: model.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)},
                                    jnp.zeros((1, size, size, 3)), train=True))()


def imported(path, model_config, variables, **kwargs):
  """`variables` with the file's arrays in place of theirs."""
  result = pretrained.load(str(path), model_config, pretrained.shapes(variables), **kwargs)
  return result, pretrained.overlay(variables, result)


def resnet_config(stem, depth=50, base_width=8):
  model = tiny_model_config('enc', lateral=True)
  model.backbone = BACKBONES.config('resnet', depth=depth, stem=stem, base_width=base_width)
  return model


@pytest.mark.parametrize('stem, torch_layout, expected_layout', [('v1c', 'mmseg', 'mmseg_resnet'),
                                                                 ('s', 'torch', 'resnet'),
                                                                 ('pytorch', 'torch', 'resnet')])
def test_imagenet_resnet_stages_match_pytorch(tmp_path, stem, torch_layout, expected_layout):
  """mmseg ResNet-50 V1c (stem.N), PyTorch-Encoding resnet50s (conv1.N + bn1) and torchvision (7x7) files with their
  ImageNet classifier: layout detected, fc dropped, the four stage outputs as PyTorch's in eval mode."""
  torch_model = ref.randomize_(ref.ResNet(50, stem, 8, layout=torch_layout)).eval()
  state = torch_model.state_dict()
  state.update({'fc.weight': torch.zeros(10, 256), 'fc.bias': torch.zeros(10)})
  torch.save(state, tmp_path / 'resnet.pth')
  x, x_torch = images(64)
  result, outputs = import_backbone(tmp_path / 'resnet.pth', resnet_config(stem), x)
  assert (result.layout, result.scope) == (expected_layout, 'backbone')
  with torch.no_grad():
    theirs = torch_model(x_torch)
  for ours, their in zip(outputs, theirs):
    assert relative_error(ours, their.numpy().transpose(0, 2, 3, 1)) < RTOL


def test_imagenet_hrnet_branches_match_pytorch(tmp_path):
  """An HRNetV2 file in the ImageNet layout (conv1/bn1, layer1, transitionK, stageK.m.branches/fuse_layers) with
  classification modules: the four branch outputs as PyTorch's."""
  torch_model = ref.randomize_(ref.HRNet(width=4, depth='small')).eval()
  state = torch_model.state_dict()
  state.update({'incre_modules.0.0.conv1.weight': torch.zeros(8, 4, 1, 1), 'classifier.weight': torch.zeros(10, 8)})
  torch.save({'state_dict': state}, tmp_path / 'hrnet.pth')
  model_config = resnet_config('v1c')
  model_config.backbone = BACKBONES.config('hrnet', width=4, depth='small')
  model_config.heads.decode_head.reads = (3,)
  model_config.heads.decode_head.lateral = False
  x, x_torch = images(64)
  result, outputs = import_backbone(tmp_path / 'hrnet.pth', model_config, x)
  assert result.layout == 'hrnet'
  with torch.no_grad():
    theirs = torch_model(x_torch)
  for ours, their in zip(outputs, theirs):
    assert relative_error(ours, their.numpy().transpose(0, 2, 3, 1)) < RTOL


def encnet_config(layout):
  return resnet50_encnet_model(layout)


def save_encnet(path, layout, num_classes=5, seed=0):
  config = encnet_config(layout)
  torch_model = ref.randomize_(ref.build_model(config.to_dict(), num_classes, layout=layout), seed).eval()
  state = torch_model.state_dict()
  torch.save({'state_dict': state, 'meta': {'CLASSES': list(range(num_classes))}} if layout == 'mmseg' else state,
             path)
  return config, torch_model


@pytest.mark.parametrize('layout', ['pte', 'mmseg'])
def test_whole_encnet_logits_match_pytorch(tmp_path, layout):
  """A whole EncNet (backbone, EncHead with the SE layer, auxiliary FCN head) in PyTorch-Encoding's or mmseg's layout:
  every tensor used, eval logits as PyTorch's."""
  config, torch_model = save_encnet(tmp_path / 'encnet.pth', layout)
  x, x_torch = images(64)
  result, ours = import_model(tmp_path / 'encnet.pth', config, 5, x)
  assert (result.layout, result.scope) == (layout, 'model')
  with torch.no_grad():
    theirs = torch_model(x_torch)['logits'].numpy().transpose(0, 2, 3, 1)
  assert relative_error(ours, theirs) < RTOL


def test_whole_mmseg_deeplabv3_logits_match_pytorch(tmp_path):
  """mmseg DeepLabV3 (ASPPHead: image_pool.1, aspp_modules.N, bottleneck) on ResNetV1c with its auxiliary FCN head."""
  config = encnet_config('mmseg')
  models.set_head(config, 'decode_head', HEADS.config('aspp', reads=(3,), channels=16, dilations=(1, 2, 3)))
  torch_model = ref.randomize_(ref.build_model(config.to_dict(), 5, layout='mmseg')).eval()
  torch.save({'state_dict': torch_model.state_dict(), 'meta': {}}, tmp_path / 'deeplabv3.pth')
  x, x_torch = images(64)
  result, ours = import_model(tmp_path / 'deeplabv3.pth', config, 5, x)
  assert result.layout == 'mmseg'
  with torch.no_grad():
    theirs = torch_model(x_torch)['logits'].numpy().transpose(0, 2, 3, 1)
  assert relative_error(ours, theirs) < RTOL


def ocrnet_config(flavour):
  """config.model of OCRNet on a width-4 HRNetV2 (W18-Small-v2 depth) in `flavour` (protocols.ocr_on_hrnet:
  'hrnet_ocr' with align_corners True, 'mmseg' with False): the 60-wide soft-region head, a 16-wide OCR head with 8
  key channels."""
  config = base_config()
  align_corners = flavour == 'hrnet_ocr'
  config.model.backbone = BACKBONES.config('hrnet', width=4, depth='small', align_corners=align_corners)
  stages = dict(reads=(0, 1, 2, 3), input_transform='resize_concat', align_corners=align_corners)
  protocols.ocr_on_hrnet(config, stages, width=4, flavour=flavour)
  config.model.heads.decode_head.channels = 16
  config.model.heads.decode_head.key_channels = 8
  return config.model


@pytest.mark.parametrize('flavour, layout', [('hrnet_ocr', 'hrnet_ocr'), ('mmseg', 'mmseg_cascade')])
def test_whole_ocrnet_logits_match_pytorch(tmp_path, flavour, layout):
  """OCRNet on HRNetV2 as HRNet-OCR releases it (FullModel's state dict: `model.` with conv3x3_ocr, ocr_distri_head,
  cls_head, aux_head, and the loss's class weights, which are dropped) and as mmseg saves it (CascadeEncoderDecoder:
  decode_head.0 the FCNHead, decode_head.1 the OCRHead, in {'state_dict', 'meta'}): layout detected, every tensor
  used, eval logits as PyTorch's."""
  config = ocrnet_config(flavour)
  torch_model = ref.randomize_(ref.build_model(config.to_dict(), 5, layout=layout)).eval()
  state = torch_model.state_dict()
  assert ('loss.criterion.weight' in state) == (layout == 'hrnet_ocr')
  torch.save({'state_dict': state, 'meta': {}} if layout == 'mmseg_cascade' else state, tmp_path / 'ocrnet.pth')
  x, x_torch = images(64)
  result, ours = import_model(tmp_path / 'ocrnet.pth', config, 5, x)
  assert (result.layout, result.scope) == (layout, 'model')
  assert len(result.variables) == len([k for k in state if not k.endswith('num_batches_tracked')
                                       and not k.startswith('loss.')])
  with torch.no_grad():
    theirs = torch_model(x_torch)['logits'].numpy().transpose(0, 2, 3, 1)
  assert relative_error(ours, theirs) < RTOL


def test_file_of_another_class_count_is_refused_with_each_key_then_accepted_with_skip(tmp_path):
  config, _ = save_encnet(tmp_path / 'encnet.pth', 'pte', num_classes=5)
  model = build_model(config, 3)
  variables = init_variables(model)
  with pytest.raises(convert.ImportMismatchError) as error:
    imported(tmp_path / 'encnet.pth', config, variables)
  message = str(error.value)
  for line in ("head.conv6.1.weight is (5, 16, 1, 1) in the file; the model's params/decode_head/conv_seg/kernel "
               'needs (3, 16, 1, 1)', 'head.encmodule.selayer.bias is (5,)', 'auxlayer.conv5.4.weight is (5, 8, 1, 1)'):
    assert line in message
  assert message.count('shape mismatch') == 6  # weight and bias of three classifiers
  result, new = imported(tmp_path / 'encnet.pth', config, variables, skip=('conv_seg', 'se_layer'))
  assert not any('conv_seg' in path or 'se_layer' in path for path in result.variables)
  np.testing.assert_array_equal(new['params']['decode_head']['conv_seg']['kernel'],
                                variables['params']['decode_head']['conv_seg']['kernel'])
  np.testing.assert_array_equal(new['params']['decode_head']['bottleneck']['conv']['kernel'],
                                result.variables['params/decode_head/bottleneck/conv/kernel'])


def test_missing_and_unexpected_keys_are_listed(tmp_path):
  config, torch_model = save_encnet(tmp_path / 'encnet.pth', 'pte')
  state = torch_model.state_dict()
  del state['pretrained.layer2.0.conv1.weight']
  state['head.extra.weight'] = torch.zeros(2, 3)
  torch.save(state, tmp_path / 'broken.pth')
  variables = init_variables(build_model(config, 5))
  with pytest.raises(convert.ImportMismatchError, match=r'(?s)missing in the file: pretrained\.layer2\.0\.conv1\.'
                     r'weight \(16, 32, 1, 1\) \(for params/backbone/layer2_0/conv1/kernel\).*not used by the model: '
                     r'head\.extra\.weight \(2, 3\)'):
    imported(tmp_path / 'broken.pth', config, variables)


def test_pickled_objects_are_refused(tmp_path):
  """A checkpoint that needs full unpickling (here an argparse.Namespace, as training scripts saved their args) is
  refused, not run."""
  torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'args': argparse.Namespace(lr=0.1)},
             tmp_path / 'pickled.pth')
  with pytest.raises(readers.WeightsFileError, match=r'refusing .*pickled\.pth: it holds pickled Python objects'):
    readers.read_state_dict(tmp_path / 'pickled.pth')


def test_safetensors_file_reads_without_torch(tmp_path):
  """A .safetensors file built byte by byte from the format's description reads back; an EncNet saved both ways
  imports the same."""
  header = (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
            b'"b":{"dtype":"I64","shape":[],"data_offsets":[8,16]}}')
  data = np.array([1.5, -2.0], '<f4').tobytes() + np.array(7, '<i8').tobytes()
  (tmp_path / 'hand.safetensors').write_bytes(len(header).to_bytes(8, 'little') + header + data)
  state = readers.read_state_dict(tmp_path / 'hand.safetensors')
  np.testing.assert_array_equal(state['a'], [1.5, -2.0])
  assert state['b'] == 7 and state['b'].shape == ()
  config, torch_model = save_encnet(tmp_path / 'encnet.pth', 'mmseg')
  readers.write_safetensors(tmp_path / 'encnet.safetensors',
                            {k: v.numpy() for k, v in torch_model.state_dict().items()})
  variables = init_variables(build_model(config, 5))
  from_pth, _ = imported(tmp_path / 'encnet.pth', config, variables)
  from_safetensors, _ = imported(tmp_path / 'encnet.safetensors', config, variables)
  assert from_pth.variables.keys() == from_safetensors.variables.keys()
  for path, array in from_pth.variables.items():
    np.testing.assert_array_equal(array, from_safetensors.variables[path])


def test_layout_detection_names_the_layouts_when_it_cannot_tell():
  assert layouts.detect(['backbone.stem.0.weight', 'decode_head.conv_seg.weight']) == 'mmseg'
  assert layouts.detect(['pretrained.conv1.0.weight', 'head.conv5.0.weight']) == 'pte'
  assert layouts.detect(['backbone.conv1.weight', 'decode_head.0.conv_seg.weight',
                         'decode_head.1.conv_seg.weight']) == 'mmseg_cascade'
  assert layouts.detect(['model.conv1.weight', 'model.ocr_distri_head.conv_bn_dropout.0.weight',
                         'loss.criterion.weight']) == 'hrnet_ocr'
  with pytest.raises(layouts.LayoutError, match=r"keys like \['blocks\.0\.weight'\].*--layout"):
    layouts.detect(['blocks.0.weight'])


# Full-size key maps, checked by shapes alone: PyTorch modules on the meta device (no memory), our variables from
# jax.eval_shape, the file stood in for by zero-stride arrays of the right shapes.
def _shape_only_state(torch_model):
  return {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in torch_model.state_dict().items()}


def _full_size(model_config, num_classes=59):
  return variable_shapes(build_model(model_config, num_classes))


@pytest.mark.parametrize('stem, depth, torch_layout, layout', [
    ('v1c', 50, 'mmseg', 'mmseg_resnet'), ('v1c', 101, 'mmseg', 'mmseg_resnet'), ('s', 50, 'torch', 'resnet'),
    ('s', 101, 'torch', 'resnet'), ('pytorch', 50, 'torch', 'resnet'), ('v1c', 50, 'torch', 'resnet')])
def test_full_size_resnet_maps_fill_every_tensor(stem, depth, torch_layout, layout):
  """ResNet-50/101 V1c (mmseg), resnet50s/101s (PyTorch-Encoding, timm resnet50s), torchvision, timm resnet50c."""
  with torch.device('meta'):
    state = _shape_only_state(ref.ResNet(depth, stem, 64, layout=torch_layout))
  model_config = resnet_config(stem, depth, 64)
  wanted = _full_size(model_config)
  filled = convert.match(state, wanted, layout=layouts.get(layout), model_config=model_config, scope='backbone')
  assert set(filled) == {p for p in wanted if p.split('/')[1] == 'backbone'}


@pytest.mark.parametrize('width', [18, 48])
def test_full_size_hrnet_maps_fill_every_tensor(width):
  with torch.device('meta'):
    state = _shape_only_state(ref.HRNet(width))
  model_config = encnet_config('mmseg')
  model_config.backbone = BACKBONES.config('hrnet', width=width)
  model_config.heads.decode_head.reads = (3,)
  wanted = _full_size(model_config)
  filled = convert.match(state, wanted, layout=layouts.get('hrnet'), model_config=model_config, scope='backbone')
  assert len(filled) == len([p for p in wanted if '/backbone/' in p]) == len(state) - len(
      [k for k in state if k.endswith('num_batches_tracked')])


@pytest.mark.parametrize('layout, shipped', [
    ('pte', 'encnet_pcontext'), ('mmseg', 'encnet_cityscapes'), ('mmseg', 'deeplabv3_r101_cityscapes'),
    ('hrnet_ocr', 'ocrnet_hr48_cityscapes'), ('mmseg_cascade', 'ocrnet_hr48_cityscapes_mmseg'),
    ('mmseg_cascade', 'ocrnet_r101_cityscapes')])
def test_full_size_whole_model_maps_fill_every_tensor(layout, shipped):
  """The shipped EncNet, DeepLabV3 and OCRNet configs' models against full-width PyTorch models in each layout."""
  model_config = shipped_configs.load(f'configs/{shipped}.py').model
  with torch.device('meta'):
    state = _shape_only_state(ref.build_model(model_config.to_dict(), 59, layout=layout))
  wanted = _full_size(model_config)
  filled = convert.match(state, wanted, layout=layouts.get(layout), model_config=model_config, scope='model')
  assert set(filled) == set(wanted)




# BatchNorm running variance: PyTorch updates it with the unbiased batch variance; config.model.bn_running_var
# ('unbiased' by default) does the same, so fine-tuning imported weights continues PyTorch's statistics.
@pytest.mark.parametrize('convention', ['unbiased', 'biased'])
def test_batchnorm_running_variance_follows_torch_when_unbiased(convention):
  from ctxseg_jax.models.layers.conv import batch_norm, running_var
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(4, 5, 6, 3)).astype(np.float32)
  old_mean, old_var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, size=3).astype(np.float32)
  torch_bn = torch.nn.BatchNorm2d(3).train()
  torch_bn.running_mean.copy_(torch.from_numpy(old_mean))
  torch_bn.running_var.copy_(torch.from_numpy(old_var))
  with torch.no_grad():
    expected_y = torch_bn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
  bn = batch_norm(train=True)
  variables = {'params': {'scale': jnp.ones(3), 'bias': jnp.zeros(3)},
               'batch_stats': {'mean': old_mean, 'var': old_var}}
  with running_var(convention):
    y, updates = bn.apply(variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], torch_bn.running_mean.numpy(), rtol=1e-6)
  n = 4 * 5 * 6
  biased = 0.9 * old_var + 0.1 * x.reshape(-1, 3).var(axis=0)
  expected_var = torch_bn.running_var.numpy() if convention == 'unbiased' else biased
  np.testing.assert_allclose(updates['batch_stats']['var'], expected_var, rtol=1e-6)
  assert np.all(np.abs(torch_bn.running_var.numpy() - biased) > 10 * 1e-6 * biased * n)  # the two differ


def test_training_step_statistics_continue_pytorch_ones():
  """One training-mode forward pass of an imported EncNet updates every running mean and variance (BatchNorm2d
  and the Encoding's BatchNorm1d) as PyTorch's does."""
  config = encnet_config('pte')
  assert config.bn_running_var == 'unbiased'
  torch_model = ref.randomize_(ref.build_model(config.to_dict(), 5, layout='pte'))
  state = {k: v.numpy().copy() for k, v in torch_model.state_dict().items()}  # not views of what torch updates
  model = build_model(config, 5)
  wanted = variable_shapes(model)
  variables = convert.unflatten(convert.match(state, wanted, layout=layouts.get('pte'), model_config=config,
                                              scope='model'))
  x, x_torch = images(32)
  torch_model.train()
  with torch.no_grad():
    torch_model(x_torch)
  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                                rngs={'dropout': jax.random.key(0)}))(variables, x)
  after = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  stats = convert.flatten({'batch_stats': updates['batch_stats']})
  assert len(stats) == 2 * len([k for k in after if k.endswith('running_var')])
  for path, value in stats.items():
    key = layouts.source_key(layouts.get('pte'), config, path)
    np.testing.assert_allclose(value, after[key], rtol=2e-4, atol=1e-6, err_msg=path)
