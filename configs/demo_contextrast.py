"""Demo: Contextrast (pixel-anchor loss over the four stages' embeddings, BANE negatives) on the FCN demo
(configs/demo_fcn.py: a width-16 dilated ResNet-18 with mmseg's FCN head), trained on the built-in synthetic context
dataset with the same budget. `configs/demo_contextrast.py:baseline` is the same model and protocol without it,
which is configs/demo_fcn.py. Both report the feature-level metrics A / U / U_l at evaluation.

Contextrast here: a training-only projection head (1x1 conv-BN-ReLU, 1x1 conv to 32, L2-normalised) on each of
the four ResNet stages; the pixel-anchor term weighted 0.1 with the term's defaults (lambda 0.1, 0.4, 0.7, 1.0
from stage 1 to 4; tau 0.1; anchors updated with the last stage's, 0.5 / 0.5; 256 negatives per anchor, BANE
first with K = 50%). At inference the model is the baseline's.

python -m ctxseg_jax.main --config configs/demo_contextrast.py --workdir runs/demo_contextrast
python -m ctxseg_jax.main --config configs/demo_contextrast.py:baseline --workdir runs/demo_contextrast_baseline
"""
from ctxseg_jax import models, protocols
from ctxseg_jax.config import base_config
from ctxseg_jax.losses import TERMS, set_term
from ctxseg_jax.models.heads import HEADS


def get_config(arg: str = ''):
  if arg not in ('', 'baseline'):
    raise ValueError(f"configs/demo_contextrast.py takes no argument or 'baseline'; got {arg!r}")
  config = base_config()
  config.name = 'demo_contextrast' + ('_baseline' if arg else '')
  shared = protocols.synthetic_demo(config)
  config.eval.feature_metrics = True
  models.set_head(config.model, 'decode_head', HEADS.config('fcn', reads=(3,), num_convs=2,
                                                               concat_input=True, **shared))
  if arg != 'baseline':
    for stage in range(4):
      models.set_head(config.model, f'proj_{stage + 1}', HEADS.config(
          'projection', reads=(stage,), embed_dim=32, train_only=True, outputs=(f'embed_{stage + 1}',)))
    set_term(config.loss, 'contextrast', TERMS.config('contextrast', weight=0.1))
  return config
