"""Poi_MSE: LPA with a mean-squared instead of a cosine gradient-alignment loss (Table VII).

Nothing of LPA is copied: `fit` runs `lpa.fit` on a copy of the config whose `lpa` section is
updated with `config.poi_mse` (by default just distance='mse'), `apply` is `lpa.apply` (its cache
key includes the lpa settings, so Poi_MSE and LPA vectors never mix), and it serves as LPA does
under that config. The substitute stage is shared.
"""

import dataclasses

from mip_jax.defenses import lpa
from mip_jax.protocol import rules

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
LABEL_PRESERVING = True  # its feasible map keeps every argmax (defenses.protocol)
RULES = {}  # its fields are lpa's: `overrides_follow_lpa` applies lpa's rules to them


def overrides_follow_lpa(config) -> list[str]:
  """Every field of config.poi_mse names an lpa field and passes that field's rules."""
  overrides = config.poi_mse.to_dict()
  unknown = sorted(set(overrides) - set(config.lpa))
  if unknown:
    return [f'config.poi_mse holds {unknown}: poi_mse overrides unknown lpa fields; use the '
            f'fields of config.lpa ({", ".join(sorted(config.lpa))})']
  table = {f'poi_mse.{k[len("lpa."):]}': v for k, v in lpa.RULES.items()}
  return rules.problems(table, {f'poi_mse.{k}': v for k, v in overrides.items()})


CHECKS = (overrides_follow_lpa,)


def overridden(config):
  """A copy of `config` whose lpa section is updated with config.poi_mse."""
  rules.enforce(RULES, config, checks=CHECKS)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.lpa.update(config.poi_mse.to_dict())
  return config


def fit(setup) -> dict:
  """`lpa.fit` under config.lpa overridden by config.poi_mse."""
  return lpa.fit(dataclasses.replace(setup, config=overridden(setup.config)))


apply = lpa.apply
export = lpa.export


def serve(served, config, mesh):
  """LPA's online serving under config.lpa overridden by config.poi_mse."""
  return lpa.serve(served, overridden(config), mesh)
