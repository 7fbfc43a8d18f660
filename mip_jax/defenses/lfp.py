"""LFP: label-flipping poisoning of a budget of the served vectors (the paper's Algorithms 2 and 3).

  1. Pick (Algorithm 2): a budget of floor(r * N) of the N vectors served in one call, spread evenly
     over the predicted classes; low-confidence vectors (max(c) < thr) first, in a seeded random
     order, then topped up from the confident ones, the classes with the fewest picks first.
  2. Reverse (Algorithm 3, line 5): each picked vector's values are permuted so that their rank
     order is reversed (the largest entry takes the smallest value, ...): the label becomes the
     least likely class. With `swap` (Discussion 3) the top-1 and top-2 entries are swapped first,
     the new top (the 2nd class, often the right one for a low-confidence vector) is kept and the
     other entries are reversed: the label becomes the 2nd class instead.
  3. Fine-tune (lines 4-11): LPA's crafting (`lpa.Crafter`, signed Adam on the gradient-alignment
     loss) moves each reversed vector within eps of itself, keeping its new argmax. The poisoned
     gradient covers the whole crafting batch, picked and clean rows (PU_delta D_p + D_c); the clean
     rows are frozen (radius 0) and are served unchanged.

`apply` is called for the attacker's queries and for the private test vectors alike: it poisons the
budget among whatever batch it is given (deterministic given config.seed), so model accuracy drops
by about r (less with `swap`), as in the paper's Table I.
"""

import numpy as np

from mip_jax.defenses import artefact, cache, lpa, protocol, space
from mip_jax.protocol import rules, substitute
from mip_jax.runtime import checkpoints, console

REPLACES_CLASSIFIER = False  # a post-processing unit (defenses.protocol)
RULES = {
    **lpa.crafting_rules('lfp'),
    'lfp.budget': (rules.within(0, 1, open_lo=True),),
    'lfp.threshold': (rules.within(0, 1, open_lo=True),),
    'lfp.eps': (rules.NON_NEGATIVE,),  # 0: reversal only, no fine-tuning
}


# ---------------------------------------------------------------- Algorithm 2: picking

def pick(probs: np.ndarray, *, budget: float, threshold: float, seed: int) -> np.ndarray:
  """Boolean mask [N] of the floor(budget * N) vectors to poison (Algorithm 2).

  Args:
    probs: served (clean) vectors [N, m].
    budget: r, the fraction to poison, in [0, 1].
    threshold: thr; vectors with max(c) < thr are picked before any other.
    seed: orders the vectors inside each (class, confidence group) at random.

  Returns:
    The mask; picks are spread over the predicted classes as evenly as their sizes allow.
  """
  probs = np.asarray(probs)
  n = len(probs)
  quota = int(np.floor(budget * n + 1e-9))
  labels, low = np.argmax(probs, 1), np.max(probs, 1) < threshold
  shuffle = np.random.default_rng(seed).random(n)
  # Each row's turn: its position in its class's queue (low-confidence rows first, shuffled). Rows
  # taken by (group, turn, class) give a round-robin over classes; confident rows continue their
  # class's count, so the top-up goes first to the classes that got the fewest low-confidence picks.
  turn = np.zeros(n, np.int64)
  for k in np.unique(labels):
    unsure = np.flatnonzero((labels == k) & low)
    sure = np.flatnonzero((labels == k) & ~low)
    turn[unsure[np.argsort(shuffle[unsure], kind='stable')]] = np.arange(len(unsure))
    turn[sure[np.argsort(shuffle[sure], kind='stable')]] = len(unsure) + np.arange(len(sure))
  order = np.lexsort((labels, turn, ~low))  # last key is the primary one
  mask = np.zeros(n, bool)
  mask[order[:quota]] = True
  return mask


# ---------------------------------------------------------------- Algorithm 3: reversal

def reverse(probs: np.ndarray) -> np.ndarray:
  """Reverses each row's rank order: a permutation of its values, largest entry <-> smallest.

  Ties keep argmax's convention (the first index counts as larger), so a row with distinct values
  always changes label, and its argmax becomes its former argmin.
  """
  probs = np.asarray(probs)
  order = np.argsort(-probs, axis=1, kind='stable')            # positions, largest value first
  values = np.take_along_axis(probs, order, 1)
  out = np.empty_like(probs)
  np.put_along_axis(out, order, values[:, ::-1], 1)
  return out


def swap_reverse(probs: np.ndarray) -> np.ndarray:
  """Discussion 3: swap the top-1 and top-2 entries, keep that top fixed, reverse the others.

  The label becomes the 2nd most likely class; the remaining positions (the old top first) take the
  remaining values in reversed rank order. With two classes this equals `reverse`.
  """
  probs = np.asarray(probs)
  order = np.argsort(-probs, axis=1, kind='stable')
  values = np.take_along_axis(probs, order, 1)
  out = np.empty_like(probs)
  np.put_along_axis(out, order[:, 1:2], values[:, :1], 1)      # top value -> 2nd class
  rest = np.concatenate([order[:, :1], order[:, 2:]], 1)        # old top, 3rd, ..., last
  np.put_along_axis(out, rest, values[:, 1:][:, ::-1], 1)       # their values, reversed
  return out


# ---------------------------------------------------------------- the defense protocol

def fine_tunes(cfg) -> bool:
  """Whether LFP crafts around the reversed vectors (else it only reverses them)."""
  return cfg.steps > 0 and cfg.eps > 0 and cfg.budget > 0


def fit(setup) -> dict:
  """Substitute decoder, target gradient and crafter (skipped when no fine-tuning is asked for)."""
  config = setup.config
  cfg = config.lfp
  rules.enforce(RULES, config)
  members = []
  if fine_tunes(cfg):
    lpa.check_crafting(cfg, setup.mesh, 'lfp')
    model, variables = substitute.train_substitute(setup)
    loss_fn = substitute.decoder_loss_fn(model, variables['batch_stats'],
                                         substitute.attack_config(config), cfg.loss, cfg.batchnorm)
    members = [(model, variables, lpa.defensive_gradient(loss_fn, variables['params'], setup,
                                                         cfg))]
  return make_state(config, members, setup.mesh, workdir=setup.workdir)


def make_state(config, members: list, mesh, *, workdir: str | None) -> dict:
  """LFP's state: its settings, the crafter of its substitute `members` (none: reversal only) and
  where crafted vectors are cached (None: crafted on every call, as when serving)."""
  cfg = config.lfp
  state = {'cfg': cfg, 'seed': space.crafting_seed(config), 'workdir': workdir, 'crafter': None,
           'members': members}
  if members:
    state['crafter'] = lpa.Crafter(members=members, config=config, mesh=mesh, section=cfg,
                                   name='lfp')
    state['tag'] = lpa.cache_tag(config, cfg, [m[1] for m in members], [m[2] for m in members])
  return state


def export(state: dict) -> artefact.Artefact:
  """The substitute and its target gradient when LFP fine-tunes; nothing else (settings are the
  config's)."""
  fields, arrays = lpa.export_members(state['members'])
  return artefact.Artefact(settings={'members': fields}, arrays=arrays)


def serve(served: artefact.Artefact, config, mesh) -> protocol.Backend:
  """LFP on each request as it comes: a budget of its rows reversed (and fine-tuned). Which rows
  are picked depends on the whole request (Algorithm 2 picks a fraction of a batch), by design."""
  members = lpa.restore_members(served.settings['members'], served.arrays)
  state = make_state(config, members, mesh, workdir=None)
  return protocol.Backend(lambda probs, images: (apply(state, probs, images=images), None),
                          needs_images=bool(members))


def apply(state: dict, probs: np.ndarray, *, images: np.ndarray | None = None) -> np.ndarray:
  """LFP vectors: a budget of `probs` reversed (and fine-tuned), the rest unchanged; cached."""
  cfg = state['cfg']
  probs = np.asarray(probs, np.float32)
  mask = pick(probs, budget=cfg.budget, threshold=cfg.threshold, seed=state['seed'])
  centre = probs.copy()
  centre[mask] = (swap_reverse if cfg.swap else reverse)(probs[mask])
  if state['crafter'] is None or not mask.any():
    return centre
  if images is None:
    raise ValueError('LFP fine-tuning needs the queried images (set lfp.steps=0 to only reverse)')
  images = np.asarray(images, np.float32)

  def craft():
    radius = np.where(mask, cfg.eps, 0.0).astype(np.float32)
    defended, losses = state['crafter'](centre, images, seed=state['seed'], radius=radius)
    console.say('LFP poisoned %d of %d vectors: mean alignment loss %.4f', int(mask.sum()),
                len(probs), float(np.mean(losses[mask])))
    return {'defended': defended, 'reversed': centre, 'clean': probs, 'picked': mask,
            'alignment_loss': losses}

  if state['workdir'] is None:
    return craft()['defended']
  key = checkpoints.fingerprint([state['tag'], checkpoints.exact_fingerprint(probs, images)])
  return cache.cached(state['workdir'], 'lfp', key, craft)
