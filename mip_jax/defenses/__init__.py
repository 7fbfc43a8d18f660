"""Defenses: one module per defense, each following `protocol.Defense` (design section 5).

  state = module.fit(setup)                      # craft / train what the defense needs
  defended = module.apply(state, probs, images=) # defended vectors for queries with clean `probs`
  module.REPLACES_CLASSIFIER                     # True: a retrained classifier (MID, BiDO)
  module.RULES                                   # its config fields' limits (`protocol.rules`)

`setup` is an `experiment.Setup` (cached classifier, splits, clean vectors, workdir, config).

The registry maps names to where a defense lives ('module' or 'module:attribute'), and a defense is
imported when it is first asked for: listing the names (flags, validation, error messages) imports
none of them, and `rule_owners` names the modules whose RULES `validation` reads at check time.
"""

import importlib
from collections.abc import MutableMapping

from mip_jax.defenses import protocol

_PACKAGE = 'mip_jax.defenses'
# name -> 'module' or 'module:attribute' under mip_jax.defenses; the order is the order of tables.
LOCATIONS = {
    'none': 'none', 'random': 'random_control', 'lpa': 'lpa',
    'lfp': 'lfp', 'noise': 'noise', 'onepara': 'onepara', 'rounding': 'rounding', 'topk': 'topk',
    'advexa': 'advexa', 'pgd': 'pgd', 'poi_mse': 'poi_mse',
    'mid': 'mid', 'bido_coco': 'bido:COCO', 'bido_hsic': 'bido:HSIC',
    'purification': 'purification',
    'grad2': 'grad2', 'am': 'misinformation', 'tailfloor': 'tailfloor',
    'template': 'template', 'learned': 'learned',
    'vae': 'vae',  # Table IX generator
}


def module_path(location: str) -> str:
  """'bido:COCO' -> 'mip_jax.defenses.bido'."""
  return f'{_PACKAGE}.{location.split(":")[0]}'


class Registry(MutableMapping):
  """name -> defense, each imported and checked against the protocol on first access.

  A defense registered in code (`REGISTRY['mine'] = module`) is checked when it is set.
  """

  def __init__(self, locations: dict[str, str]):
    self._locations = dict(locations)
    self._loaded = {}

  def __getitem__(self, name: str):
    if name not in self._loaded:
      location = self._locations[name]  # KeyError for an unknown name, as a dict
      module = importlib.import_module(module_path(location))
      _, _, attribute = location.partition(':')
      self._loaded[name] = protocol.check(name, getattr(module, attribute) if attribute
                                          else module)
    return self._loaded[name]

  def __setitem__(self, name: str, defense) -> None:
    self._loaded[name] = protocol.check(name, defense)
    self._locations.setdefault(name, None)

  def __delitem__(self, name: str) -> None:
    del self._locations[name]
    self._loaded.pop(name, None)

  def __iter__(self):
    return iter(self._locations)

  def __len__(self) -> int:
    return len(self._locations)

  def __contains__(self, name) -> bool:
    return name in self._locations

  def rule_owners(self) -> list[str]:
    """Module paths whose RULES / CHECKS constrain a registered defense's config (deduplicated);
    a defense registered in code is its own owner (its module, or the object itself)."""
    owners = []
    for name, location in self._locations.items():
      owner = module_path(location) if location is not None else self._loaded[name]
      if owner not in owners:
        owners.append(owner)
    return owners


REGISTRY = Registry(LOCATIONS)


def get(name: str) -> 'protocol.Defense':
  """The defense called `name`; an unknown name fails listing the known ones."""
  if name not in REGISTRY:
    raise ValueError(f'unknown defense {name!r}; known defenses: {", ".join(sorted(REGISTRY))}')
  return REGISTRY[name]


def __getattr__(name: str):
  """`defenses.noise` and the other submodules, imported on first use (PEP 562)."""
  try:
    return importlib.import_module(f'{_PACKAGE}.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'{_PACKAGE}.{name}':
      raise
    raise AttributeError(f'module {_PACKAGE!r} has no attribute {name!r}') from None
