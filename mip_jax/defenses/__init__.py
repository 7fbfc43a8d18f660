"""Defenses: one module per defense, each with the same two functions (design section 5).

  state = module.fit(setup)                      # craft / train what the defense needs
  defended = module.apply(state, probs, images=) # defended vectors for queries with clean `probs`

`setup` is an `experiment.Setup` (cached classifier, splits, clean vectors, workdir, config).
"""

from mip_jax.defenses import lpa, none

REGISTRY = {'none': none, 'lpa': lpa}


def get(name: str):
  """The defense module called `name`; an unknown name fails listing the known ones."""
  if name not in REGISTRY:
    raise ValueError(f'unknown defense {name!r}; known defenses: {", ".join(sorted(REGISTRY))}')
  return REGISTRY[name]


def check_names(names) -> list[str]:
  """Validates a list of defense names before any training starts."""
  names = list(names)
  for n in names:
    get(n)
  return names
