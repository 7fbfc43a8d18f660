"""The committed docs/results tables regenerate from their saved rows with today's renderers.

Each table's JSON holds the rows its markdown was written from; rendering them again must give the
committed table line for line (hand-written preambles above the first table line aside). A change to
a renderer, a claim line or the aggregation format that would change a committed result fails here.
"""

import json
import os

import ml_collections
import pytest

from mip_jax.studies import attribution
from mip_jax.studies.paper import claims, experiments, render

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'results')


def from_first_table_line(text: str) -> list[str]:
  lines = text.splitlines()
  return lines[next(i for i, line in enumerate(lines) if line.startswith('|')):]


@pytest.mark.parametrize('name', sorted(experiments.CELL_EXPERIMENTS))
def test_paper_tables_regenerate(name):
  doc = json.load(open(os.path.join(RESULTS, f'{name}.json')))
  committed = open(os.path.join(RESULTS, f'{name}.md')).read()
  spec = experiments.CELL_EXPERIMENTS[name](ml_collections.ConfigDict(doc['config']))
  figures = [line[line.index('(') + 1:-1] for line in committed.splitlines() if line.startswith('![')]
  text = render.markdown(spec, doc['rows'], dataset=doc['dataset'], seeds=doc['seeds'],
                         claims=claims.CLAIMS[name](doc['rows']), figures=figures)
  assert from_first_table_line(text) == from_first_table_line(committed)


@pytest.mark.parametrize('name', ['attribution/attribution', 'attribution/ablation',
                                  'mnist5k/attribution'])
def test_attribution_tables_regenerate(name):
  doc = json.load(open(os.path.join(RESULTS, f'{name}.json')))
  text = attribution.markdown(doc['dataset'], doc['rows'], doc['paired'], doc['attackers'],
                              doc['seeds'])
  assert text.splitlines() == open(os.path.join(RESULTS, f'{name}.md')).read().splitlines()
