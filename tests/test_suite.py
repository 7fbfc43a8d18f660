"""The attacker suite: names, what each attacker makes of received vectors, and its decoder inputs."""

import numpy as np
import pytest

from configs import digits
from mip_jax.attacks import suite

ATTACK = digits.get_config().attack


def probs(n=64, m=5, seed=0):
  rng = np.random.default_rng(seed)
  return rng.dirichlet(np.full(m, 0.5), n).astype(np.float32)


def perturb_non_argmax(p, seed=1):
  """The same argmax, every other entry moved (and the rows renormalised)."""
  rng = np.random.default_rng(seed)
  q = p * rng.uniform(0.2, 1.0, p.shape)
  top = p.argmax(1)
  q[np.arange(len(q)), top] = p[np.arange(len(p)), top]
  q /= q.sum(1, keepdims=True)
  assert (q.argmax(1) == top).all()
  return q


def test_label_inputs_do_not_depend_on_any_non_argmax_entry():
  a = suite.parse('label')
  p = probs()
  z = a.inputs(a.receive(p), ATTACK)
  np.testing.assert_array_equal(z, a.inputs(a.receive(perturb_non_argmax(p)), ATTACK))
  np.testing.assert_array_equal(z, np.eye(5)[p.argmax(1)])


@pytest.mark.parametrize('k', [1, 2, 3, 5])
def test_topk_keeps_k_entries_of_its_own_top(k):
  a = suite.parse(f'topk@{k}')
  p = probs()
  z = a.inputs(a.receive(p), ATTACK)
  assert ((z != 0).sum(1) == k).all()
  # the kept entries are the k largest of each row
  kept = np.argsort(-p, 1)[:, :k]
  assert (np.take_along_axis(z, kept, 1) != 0).all()


def test_topk_inputs_ignore_every_entry_below_the_kth():
  a = suite.parse('topk@2')
  p = probs()
  q = p.copy()
  rows = np.arange(len(p))
  order = np.argsort(-p, 1)
  for j in (2, 3, 4):  # every entry below the 2nd moves, within its place in the order
    q[rows, order[:, j]] *= 0.5
  np.testing.assert_array_equal(a.inputs(p, ATTACK), a.inputs(q, ATTACK))


def test_rank_inputs_depend_on_the_order_alone():
  a = suite.parse('rank')
  p = probs()
  sharper = p ** 3 / (p ** 3).sum(1, keepdims=True)  # monotone: same order, other values
  np.testing.assert_array_equal(a.receive(p), a.receive(sharper))
  np.testing.assert_array_equal(a.receive(np.array([[0.1, 0.5, 0.2, 0.15, 0.05]])),
                                [[0.25, 1.0, 0.75, 0.5, 0.0]])


def test_temperature_sharpens_and_flattens():
  p = np.array([[0.6, 0.3, 0.1]], np.float32)
  sharp, flat = suite.temperature(p, 0.5), suite.temperature(p, 2.0)
  np.testing.assert_allclose(sharp, [np.array([36, 9, 1]) / 46], rtol=1e-5)
  assert flat.max() < p.max() < sharp.max()


def test_defended_suffix_and_parameters_parse():
  a = suite.parse('topk@2:defended')
  assert (a.base, a.param, a.defended, a.training_name) == ('topk', 2, True, 'topk@2')
  assert suite.parse('diffusion_floor@0.5').training_name == 'diffusion_floor'
  assert suite.parse('temp@0.5').param == 0.5
  for bad, what in (('topk', 'topk@k'), ('topk@0', 'k >= 1'), ('topk@1.5', 'k >= 1'),
                    ('temp@0', 'T > 0'), ('label@2', 'takes no parameter'), ('flor', 'known'),
                    ('floor:defnded', 'known')):
    with pytest.raises(ValueError, match=what):
      suite.parse(bad)
  with pytest.raises(ValueError, match='exceeds the 5 classes'):
    suite.check_classes(suite.parse('topk@6'), 5)


def test_zero_robust_attackers_use_their_transform():
  assert suite.parse('floor').attack_config(ATTACK).transform == 'floor'
  assert suite.parse('prob').attack_config(ATTACK).transform == 'prob'
  assert suite.parse('none').attack_config(ATTACK) is ATTACK  # the paper's, untouched
  cfg = suite.parse('topk@3').attack_config(ATTACK)
  assert (cfg.transform, cfg.top_k) == ('floor', 3) and ATTACK.top_k is None


class _Gate:
  """A defense whose served vectors show which ones it touched (rows with a first entry of 0.5)."""

  @staticmethod
  def looks_defended(state, p):
    del state
    return p[:, 0] == 0.5


def test_drop_trains_on_the_vectors_that_do_not_look_defended():
  p = probs(10)
  p[:4, 0] = 0.5
  keep = suite.parse('drop').keep(p, _Gate, None)
  np.testing.assert_array_equal(keep, [False] * 4 + [True] * 6)
  # Other attackers keep everything; a defense without a signature loses nothing either.
  assert suite.parse('floor').keep(p, _Gate, None).all()
  assert suite.parse('drop').keep(p, object(), None).all()
  # Everything looks defended: nothing to drop for, it trains on all of them.
  assert suite.parse('drop').keep(np.full((3, 2), 0.5), _Gate, None).all()
  # Fewer served clean than a batch (6 < 7): too few to learn from alone, it trains on all; at
  # exactly the minimum it drops.
  assert suite.parse('drop').keep(p, _Gate, None, min_kept=7).all()
  np.testing.assert_array_equal(suite.parse('drop').keep(p, _Gate, None, min_kept=6), keep)
