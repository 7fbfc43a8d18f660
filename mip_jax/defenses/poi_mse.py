"""Poi_MSE: LPA with a mean-squared instead of a cosine gradient-alignment loss (Table VII).

Nothing of LPA is copied: `fit` runs `lpa.fit` on a copy of the config whose `lpa` section is
updated with `config.poi_mse` (by default just distance='mse'), and `apply` is `lpa.apply` (its
cache key includes the lpa settings, so Poi_MSE and LPA vectors never mix). The substitute stage is
shared.
"""

import dataclasses

from mip_jax.defenses import lpa

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # its feasible map keeps every argmax (defenses.protocol)


def fit(setup) -> dict:
  """`lpa.fit` under config.lpa overridden by config.poi_mse."""
  overrides = setup.config.poi_mse.to_dict()
  unknown = sorted(set(overrides) - set(setup.config.lpa))
  if unknown:
    raise ValueError(f'poi_mse overrides unknown lpa fields {unknown}; '
                     f'known: {sorted(setup.config.lpa)}')
  config = setup.config.copy_and_resolve_references()
  with config.unlocked():
    config.lpa.update(overrides)
  return lpa.fit(dataclasses.replace(setup, config=config))


apply = lpa.apply
