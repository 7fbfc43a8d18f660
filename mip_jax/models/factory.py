"""Builds the models from an ml_collections config (field names: configs/common.py)."""

import ml_collections

from mip_jax.models.classifier import Classifier
from mip_jax.models.decoder import Decoder


def make_classifier(section: ml_collections.ConfigDict, num_classes: int) -> Classifier:
  """Classifier from a config section with fields channels, hidden_mult, dropout.

  Use config.classifier for the target T and config.eval_classifier for the evaluator E.
  """
  return Classifier(num_classes=num_classes, channels=tuple(section.channels),
                    hidden_mult=section.hidden_mult, dropout=section.dropout)


def make_decoder(config: ml_collections.ConfigDict, num_classes: int,
                 section: ml_collections.ConfigDict | None = None) -> Decoder:
  """Decoder from a decoder section (width, blocks, optional extra_blocks and impl) and
  config.image_size/channels; `section` defaults to config.decoder (the attacker's).

  Raises ValueError (naming config.decoder.blocks / config.image_size) when the block count
  does not produce config.image_size.
  """
  dec = config.decoder if section is None else section
  return Decoder(image_shape=(config.image_size, config.image_size, config.channels),
                 width=dec.width, blocks=dec.blocks, extra_blocks=dec.get('extra_blocks', 0),
                 impl=dec.get('impl', 'auto'), in_features=num_classes)
