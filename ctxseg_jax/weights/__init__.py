"""Importing published PyTorch and safetensors checkpoints: readers, layouts (key maps), strict conversion."""
from ctxseg_jax.weights.convert import ImportMismatchError
from ctxseg_jax.weights.layouts import LayoutError
from ctxseg_jax.weights.readers import WeightsFileError

# What a weights file, its layout or its fit to the model can raise; each message names the file and the fix.
ERRORS = (WeightsFileError, LayoutError, ImportMismatchError)
