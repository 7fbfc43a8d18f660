"""Models: Yang et al.'s classifier and inversion decoder (Flax Linen), fast transposed convs.

Every model is applied as a pure function:
  variables = model.init(key, x, train=False)              # {'params', 'batch_stats'}
  y, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])   # training
  y = model.apply(variables, x, train=False)                                     # evaluation
"""

from mip_jax.models.classifier import Classifier
from mip_jax.models.conv_transpose import (ConvTranspose4x4S2, ConvTransposeStem,
                                           conv_transpose_s2, conv_transpose_stem)
from mip_jax.models.decoder import Decoder
from mip_jax.models.factory import make_classifier, make_decoder

__all__ = [
    'Classifier',
    'ConvTranspose4x4S2',
    'ConvTransposeStem',
    'Decoder',
    'conv_transpose_s2',
    'conv_transpose_stem',
    'make_classifier',
    'make_decoder',
]
