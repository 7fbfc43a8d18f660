"""Config rules: the values a config field may take, declared by the module that reads the field.

  RULES = {'noise.scale': (rules.POSITIVE,)}             # defenses/noise.py
  RULES = {'*.batch_size': (rules.POSITIVE,)}            # a pattern: every section's batch_size
  CHECKS = (beta_order,)                                  # cross-field: config -> [sentence, ...]

  rules.enforce(RULES, config, checks=CHECKS)   # a defense's fit: ConfigError before any training
  validation.check(config)                      # every owner's RULES and CHECKS at once

A rule is a callable `value -> problem` (a phrase such as 'must be > 0', or None) that also lists
its `edges`: values on both sides of each of its limits and whether it accepts them, so that a test
can walk every rule of every defense and prove that what `validation` accepts, `fit` accepts too.
This module imports nothing of the library: a defense can declare its rules without importing
`validation`, and `validation` can be imported without any defense.

Patterns are shell-style (`fnmatch`): every pattern that matches a field applies, in the order
declared, and the first problem is the field's one sentence. A None value skips the rules (whether a
field may be None is the type check's decision, `validation`), and a CHECKS function skips the
comparisons a None field of its own takes part in, as the rules do.
"""

import difflib
import fnmatch
import math
from typing import Any, Callable, Iterable, Sequence

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot run; the message says which field to change and to what."""


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


class Rule:
  """value -> problem phrase or None; `edges(default)` -> [(value, accepted), ...]."""

  def __call__(self, value) -> str | None:
    raise NotImplementedError

  def edges(self, default) -> list[tuple[Any, bool]]:
    """Values at this rule's limits (of the type of `default`, the field's default value) and
    whether the rule accepts each."""
    raise NotImplementedError


class Range(Rule):
  """A number between bounds (None: unbounded on that side); `integer` also asks for an int.

  Messages: 'must be > lo', 'must be >= lo', 'must be < hi', 'must lie in (lo, hi]', ...
  """

  def __init__(self, lo=None, hi=None, *, open_lo=False, open_hi=False, integer=False):
    self.lo, self.hi, self.open_lo, self.open_hi = lo, hi, open_lo, open_hi
    self.integer = integer

  def _inside(self, v) -> bool:
    if self.lo is not None and not (v > self.lo if self.open_lo else v >= self.lo):
      return False
    return self.hi is None or (v < self.hi if self.open_hi else v <= self.hi)

  def _limits(self) -> str:
    """'> 0', '<= 1', 'in (0, 1]': what the value must be."""
    lo, hi = self.lo, self.hi
    if lo is None or lo == -math.inf:
      return f'{"<" if self.open_hi else "<="} {hi}'
    if hi is None:
      return f'{">" if self.open_lo else ">="} {lo}'
    return f'in {"(" if self.open_lo else "["}{lo}, {hi}{")" if self.open_hi else "]"}'

  def __call__(self, value):
    limits = self._limits()
    if self.integer and not _integer(value):
      return f'must be an integer {limits}'
    if _number(value) and self._inside(value):
      return None
    return f'must {"lie" if limits.startswith("in") else "be"} {limits}'

  def edges(self, default):
    integer = self.integer or _integer(default)
    step = lambda b: 1 if integer else max(abs(b), 1.0) * 1e-6
    values = []
    for bound, is_open, inward in ((self.lo, self.open_lo, 1), (self.hi, self.open_hi, -1)):
      if bound is None or math.isinf(bound):
        continue
      for v in (bound, bound + inward * step(bound), bound - inward * step(bound)):
        values.append(int(v) if integer else float(v))
    if self.lo == -math.inf:
      values.append(-math.inf)
    return [(v, self(v) is None) for v in dict.fromkeys(values)]


def above(lo, *, integer=False) -> Range:
  return Range(lo, None, open_lo=True, integer=integer)


def at_least(lo, *, integer=False) -> Range:
  return Range(lo, None, integer=integer)


def below(hi) -> Range:
  """A finite number < hi (-inf is refused as well)."""
  return Range(-math.inf, hi, open_lo=True, open_hi=True)


def within(lo, hi, *, open_lo=False, open_hi=False) -> Range:
  return Range(lo, hi, open_lo=open_lo, open_hi=open_hi)


class OneOf(Rule):
  """A value among `known()` (called at check time, so names registered after import count)."""

  def __init__(self, known: Callable[[], Iterable]):
    self.known = known

  def __call__(self, value):
    names = list(self.known())
    if value in names:
      return None
    close = difflib.get_close_matches(str(value), [str(n) for n in names], n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    return f'must be one of {", ".join(map(repr, names))}{hint}'

  def edges(self, default):
    names = list(self.known())
    wrong = (f'{names[0]}_x' if isinstance(names[0], str)
             else max(n for n in names if _number(n)) + 1)
    return [(n, True) for n in names] + [(wrong, False)]


def one_of(known: Callable[[], Iterable] | Sequence) -> OneOf:
  """`one_of(('a', 'b'))`, or `one_of(lambda: REGISTRY)` for names that can grow."""
  return OneOf(known if callable(known) else (lambda: tuple(known)))


class Optional(Rule):
  """None, or what `rule` accepts."""

  def __init__(self, rule: Rule):
    self.rule = rule

  def __call__(self, value):
    return None if value is None else self.rule(value)

  def edges(self, default):
    return [(None, True)] + self.rule.edges(default)


def optional(rule: Rule) -> Optional:
  return Optional(rule)


class Each(Rule):
  """A tuple / list whose every entry passes `rule` (non-empty, ascending when asked)."""

  def __init__(self, rule: Rule, *, nonempty: bool = True, ascending: bool = False):
    self.rule, self.nonempty, self.ascending = rule, nonempty, ascending

  def __call__(self, value):
    if self.nonempty and not value:
      return 'must not be empty'
    for x in value:
      problem = self.rule(x)
      if problem:
        return f'has entry {x!r} that {problem}'
    if self.ascending and list(value) != sorted(value):
      return 'must be in ascending order'
    return None

  def edges(self, default):
    entry = next(iter(default), None) if default is not None else None
    out = [((v,), ok) for v, ok in self.rule.edges(entry)]
    out.append(((), not self.nonempty))
    if self.ascending:
      accepted = [v for v, ok in self.rule.edges(entry) if ok and _number(v)]
      if len(set(accepted)) >= 2:
        out.append((tuple(sorted(set(accepted), reverse=True)[:2]), False))
    return out


def each(rule: Rule, *, nonempty: bool = True, ascending: bool = False) -> Each:
  return Each(rule, nonempty=nonempty, ascending=ascending)


POSITIVE = above(0)
NON_NEGATIVE = at_least(0)
UNIT_OPEN = within(0, 1, open_lo=True, open_hi=True)

Table = dict[str, tuple[Rule, ...]]
Check = Callable[[Any], list[str]]


# ---------------------------------------------------------------- applying rules to a config

def flatten(config) -> dict[str, Any]:
  """{'lpa.eps': 0.01, ...}: every leaf of a (nested) ConfigDict by its dotted path."""
  out = {}
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out.update({f'{key}.{k}': v for k, v in flatten(value).items()})
    else:
      out[key] = value
  return out


def problem(path: str, value, phrase: str) -> str:
  """The one sentence of a field's problem: what it is, what is wrong, which flag to change."""
  return f'config.{path}={value!r} {phrase}: change --config.{path}'


def merge(tables: Iterable[Table]) -> Table:
  """One table of several owners' tables; a pattern two owners declare gets both's rules."""
  out: Table = {}
  for table in tables:
    for pattern, rules in table.items():
      known = out.get(pattern, ())
      out[pattern] = known + tuple(r for r in rules if r not in known)
  return out


def problems(table: Table, values: dict[str, Any]) -> list[str]:
  """One sentence per field of `values` (flattened config) that breaks a rule of `table`."""
  found = []
  for path, value in values.items():
    if value is None:
      continue
    for pattern, rules in table.items():
      if not fnmatch.fnmatchcase(path, pattern):
        continue
      phrase = None
      for rule in rules:
        try:
          phrase = rule(value)
        except TypeError:  # no type check ran first (validation without defaults, a fit)
          phrase = f'has the wrong type ({type(value).__name__})'
        if phrase:
          break
      if phrase:
        found.append(problem(path, value, phrase))
        break
  return found


def raise_problems(found: list[str]) -> None:
  """ConfigError holding `found` (one sentence each), when there is any."""
  if found:
    raise ConfigError('\n'.join(found) if len(found) > 1 else found[0])


def enforce(table: Table, config, *, checks: Sequence[Check] = ()) -> None:
  """Raises ConfigError for every field of `config` that breaks `table`; then runs `checks`
  (cross-field, each `check(config) -> [sentence, ...]`), which may trust the rules' types."""
  found = problems(table, flatten(config))
  if not found:
    found = [p for check in checks for p in check(config)]
  raise_problems(found)
