"""Defenses: one module per defense, each following `protocol.Defense` (design section 5).

  state = module.fit(setup)                      # craft / train what the defense needs
  defended = module.apply(state, probs, images=) # defended vectors for queries with clean `probs`
  module.REPLACES_CLASSIFIER                     # True: a retrained classifier (MID, BiDO)

`setup` is an `experiment.Setup` (cached classifier, splits, clean vectors, workdir, config).
"""

from mip_jax.defenses import lpa, none, protocol, random_control
from mip_jax.defenses import advexa, lfp, noise, onepara, pgd, poi_mse, rounding, topk
from mip_jax.defenses import bido, grad2, mid, misinformation, purification, tailfloor

REGISTRY = {'none': none, 'random': random_control, 'lpa': lpa}
REGISTRY.update(lfp=lfp, noise=noise, onepara=onepara, rounding=rounding, topk=topk, advexa=advexa,
                pgd=pgd, poi_mse=poi_mse)
REGISTRY.update(mid=mid, bido_coco=bido.COCO, bido_hsic=bido.HSIC, purification=purification)
REGISTRY.update(grad2=grad2, am=misinformation, tailfloor=tailfloor)
from mip_jax.defenses import vae  # noqa: E402  (Table IX generator)
REGISTRY['vae'] = vae
for _name, _defense in REGISTRY.items():  # a module missing part of the protocol fails at import
  protocol.check(_name, _defense)


def get(name: str) -> 'protocol.Defense':
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
