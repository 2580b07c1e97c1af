"""Backbones by name (config.model.backbone.name). Each maps (B, H, W, 3) normalised images to a list of stage
outputs, finest first; a head reads them by index (`reads`)."""
from ctxseg_jax.models.backbones import cifar_resnet, hrnet, resnet
from ctxseg_jax.settings import Registry

BACKBONES = Registry('backbone', 'name', {
    'resnet': resnet.COMPONENT,
    'hrnet': hrnet.COMPONENT,
    'cifar_resnet': cifar_resnet.COMPONENT,
})
