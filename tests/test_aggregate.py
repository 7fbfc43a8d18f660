"""Aggregation over seeds and paired differences; the seeds every stage derives."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mip_jax.runtime import keys
from mip_jax.studies import aggregate


def test_paired_differences_and_their_t_interval_match_scipy():
  a, b = [0.9, 0.7, 0.8, 0.75], [0.8, 0.72, 0.6, 0.7]
  d = np.subtract(a, b)
  p = aggregate.paired(a, b)
  assert p.mean == pytest.approx(d.mean()) and p.std == pytest.approx(d.std())
  lo, hi = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
  assert p.ci95 == pytest.approx((lo, hi), abs=1e-3)  # the table's t quantiles have 3 decimals
  assert p.sign == 'not the same sign on every seed' and not p.settled
  assert aggregate.paired([1, 2, 3], [0, 1, 1]).sign == 'higher on every seed'
  assert aggregate.paired([1, 2, 3], [0, 1, 2.1]).settled  # d = 1, 1, 0.9: the interval excludes 0
  assert aggregate.paired([1.0], [2.0]).ci95 is None
  with pytest.raises(ValueError, match='equally many seeds'):
    aggregate.paired([1, 2], [1, 2, 3])


def test_mean_rows_keeps_labels_and_every_seed():
  per_seed = [[{'defense': 'lpa', 'attacker': 'floor', 'attack_acc': v, 'eps_eta': [[0, v]]}]
              for v in (0.5, 0.7, 0.9)]
  (r,) = aggregate.mean_rows(per_seed, [{'defense': 'lpa', 'eps': 0.01}])
  assert r['eps'] == 0.01 and r['attack_acc'] == pytest.approx(0.7)
  assert r['attack_acc_seeds'] == [0.5, 0.7, 0.9]
  assert r['attack_acc_std'] == pytest.approx(np.std([0.5, 0.7, 0.9]))
  assert r['eps_eta'] == [[0, pytest.approx(0.7)]]
  with pytest.raises(ValueError, match='different numbers of rows'):
    aggregate.mean_rows([per_seed[0], per_seed[0] * 2])


def test_no_two_stages_of_seeds_0_to_9_share_a_seed():
  drawn = {(s, name): keys.stage_seed(s, name) for s in range(10) for name in keys.STAGES}
  assert len(set(drawn.values())) == len(drawn)
  assert all(0 <= v < 2 ** 31 for v in drawn.values())
  assert keys.stage_seed(3, 'attacker') == keys.stage_seed(3, 'attacker')  # a function of both
  with pytest.raises(ValueError, match='>= 0'):
    keys.stage_seed(-1, 'classifier')
