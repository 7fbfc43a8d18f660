"""One validation of a whole run config, before any data is read or any stage is trained.

  validation.check(config, defaults=digits.get_config(), devices=8)   # raises ConfigError
  validation.install_flag_checks(common.CONFIG)   # launchers: the same at flag-parsing time

Three kinds of checks, every problem one sentence that names the field and what to set:
  * types: every field against the type of its default (the config file loaded without overrides),
    so a field someone adds to configs/common.py is checked without a rule; None only where the
    default is None (a placeholder); tuple and list elements too. A field the defaults lack is an
    unknown key, reported with the closest known names (difflib).
  * rules: ranges and allowed values, declared by the module that reads each field (`RULES` of
    `OWNERS` and of every registered defense, `protocol.rules`; e.g. `defenses/noise.py` owns
    noise.scale), so a defense's own `fit` enforces exactly what is checked here.
  * cross-field checks (each owner's `CHECKS`, run once the rules pass, so they may trust the
    rules' types): classes disjoint and present in the dataset, decoder and classifier geometry,
    k <= number of classes, diffusion betas in order; and here, batch sizes divisible by the
    device count.
The owners are imported when a config is first checked, not when this module is: importing it
imports no defense, model or dataset code (a launcher's `--help` stays fast).

Why at flag-parsing time as well as in `experiment.prepare`: the launcher then exits with absl's
one-line "FATAL Flags parsing error" before JAX starts; `prepare` repeats the check for Python
callers and adds the device count, known only once JAX (and a distributed run) is initialised.
"""

import difflib
import fnmatch
import importlib
import sys
import typing

import ml_collections

from mip_jax.protocol import rules as rules_lib
from mip_jax.protocol.rules import ConfigError, flatten

__all__ = ['ConfigError', 'check', 'check_names', 'flatten', 'install_flag_checks', 'problems',
           'rules', 'unknown_key_message']

# Modules whose RULES / CHECKS limit the config sections they read (besides the defenses, which
# the registry names): the seed, the training loop, data, models, stages, attackers, metrics,
# serving.
OWNERS = (
    'mip_jax.runtime.keys', 'mip_jax.runtime.train', 'mip_jax.data.splits',
    'mip_jax.models.classifier', 'mip_jax.models.decoder', 'mip_jax.protocol.stages',
    'mip_jax.protocol.substitute', 'mip_jax.protocol.experiment', 'mip_jax.protocol.metrics',
    'mip_jax.attacks.transforms', 'mip_jax.attacks.suite', 'mip_jax.attacks.diffusion',
    'mip_jax.serving.defender',
)


def _owners() -> list:
  """Every owner of rules: the modules of OWNERS and the registered defenses' modules."""
  from mip_jax import defenses  # noqa: late import: the registry imports no defense itself
  return [importlib.import_module(o) if isinstance(o, str) else o
          for o in (*OWNERS, *defenses.REGISTRY.rule_owners())]


def rules() -> rules_lib.Table:
  """Every owner's RULES in one table (pattern -> rules); a pattern that matches no field is
  ignored, so a rule may wait for its field."""
  return rules_lib.merge(getattr(owner, 'RULES', {}) for owner in _owners())


def cross_checks() -> list[rules_lib.Check]:
  """Every owner's CHECKS (`check(config) -> [sentence, ...]`), deduplicated, in owner order."""
  return list(dict.fromkeys(c for owner in _owners() for c in getattr(owner, 'CHECKS', ())))


# ---------------------------------------------------------------- the checks

def _leaves(config, prefix: str = ''):
  """(dotted path, its section, key) for every leaf of a nested ConfigDict."""
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield prefix + key, config, key


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _leaf_types(config) -> dict[str, type]:
  """{path: declared type}: placeholders keep their type (int for `placeholder(int)`)."""
  return {path: section.get_type(key) for path, section, key in _leaves(config)}


def _type_problem(value, default, declared: type) -> str | None:
  """Why `value` does not fit the default's type, or None."""
  if value is None:
    return None if default is None else f'must be a {declared.__name__}, not None'
  if declared is bool:
    return None if isinstance(value, bool) else 'must be True or False'
  if declared is float:
    return None if _number(value) else 'must be a number'
  if declared is int:
    return None if isinstance(value, int) and not isinstance(value, bool) else 'must be an integer'
  if declared in (tuple, list):
    if not isinstance(value, (tuple, list)):
      return f'must be a {declared.__name__} like {tuple(default)!r}'
    kinds = {type(x) for x in default or ()}
    if len(kinds) == 1:
      (kind,) = kinds
      for x in value:
        if _type_problem(x, x, kind):
          return f'must hold {kind.__name__} entries like {tuple(default)!r}, got entry {x!r}'
    return None
  if declared is str:
    return None if isinstance(value, str) else 'must be a string'
  return None


def unknown_key_message(path: str, known: typing.Iterable[str]) -> str:
  """'config.lpa.epz is not a config field; did you mean lpa.eps?' (difflib's closest names)."""
  known = sorted(known)
  sections = {k.rsplit('.', 1)[0] for k in known if '.' in k}
  close = difflib.get_close_matches(path, known + sorted(sections), n=3, cutoff=0.6)
  if not close:  # at least the fields of the same section
    section = path.rsplit('.', 1)[0] + '.' if '.' in path else ''
    close = [k for k in known if section and k.startswith(section)][:8]
  hint = f'; did you mean {" or ".join(close)}?' if close else '; see configs/common.py'
  return f'config.{path} is not a config field{hint}'


def check_names(kind: str, names, known) -> list[str]:
  """Validates names against a registry (`defenses.REGISTRY`); returns them.

  Raises ConfigError naming the unknown one and the closest known names.
  """
  names, known = list(names), list(known)
  for n in names:
    if n not in known:
      close = difflib.get_close_matches(n, known, n=3)
      hint = f'did you mean {" or ".join(close)}? ' if close else ''
      raise ConfigError(f'unknown {kind} {n!r}: {hint}known {kind}s are {", ".join(known)}')
  return names


def problems(config, *, defaults=None, devices: int | None = None) -> list[str]:
  """Every problem of `config` as one sentence each ([] when it can run); see `check`."""
  values = flatten(config)
  found = []
  if defaults is not None:
    default_values, declared = flatten(defaults), _leaf_types(defaults)
    for path in values:
      if path not in default_values:
        found.append(unknown_key_message(path, default_values))
    for path, default in default_values.items():
      if path not in values:
        found.append(f'config.{path} is missing (the config file defines it); restore it')
      else:
        problem = _type_problem(values[path], default, declared[path])
        if problem:
          found.append(rules_lib.problem(path, values[path], problem))
  else:  # without defaults, at least the fields the cross-field checks read must be set
    found += [f'config.{path} is None; set --config.{path}' for path in CROSS_FIELDS
              if path in values and values[path] is None]
  if found:  # rules assume the types are right
    return found
  found = rules_lib.problems(rules(), values)
  if found:  # cross-field checks trust the rules
    return found
  found = [p for check in cross_checks() for p in check(config)]
  if devices:
    for path in fnmatch.filter(values, '*.batch_size'):
      if values[path] is not None and values[path] % devices:
        found.append(rules_lib.problem(path, values[path], f'must be a multiple of the {devices} '
                                       'devices (each step splits its batch over them)'))
  return found


# Fields the cross-field checks read; never placeholders. (ConfigDict.copy_and_resolve_references
# turns a placeholder into a plain None, so a config's own types cannot tell a placeholder from a
# mistake.)
CROSS_FIELDS = ('dataset', 'image_size', 'channels', 'private_classes', 'attack_classes',
                'decoder.blocks', 'classifier.channels', 'eval_classifier.channels')


def check(config, *, defaults=None, devices: int | None = None) -> None:
  """Raises ConfigError listing every problem of `config`, one sentence each.

  Args:
    config: the run's ConfigDict.
    defaults: the same config file without overrides (types, known keys); None checks only the
      rules and cross-field checks.
    devices: the number of devices batches are split over; None skips that check.
  """
  rules_lib.raise_problems(problems(config, defaults=defaults, devices=devices))


# ---------------------------------------------------------------- launchers (absl flags)

def install_flag_checks(config_flag) -> None:
  """Makes a `config_flags.DEFINE_config_file` flag fail in one sentence at flag-parsing time.

  An unknown override (`--config.lpa.epz=0.1`) raises AttributeError inside ml_collections, outside
  absl's handling of bad values (a traceback); it becomes a sentence with the closest field names.
  Once every flag is parsed (overrides applied) a validator (absl's public `register_validator`)
  runs `check` against the config file's defaults. Both raise absl's IllegalFlagValueError, which
  `app.run` prints as "FATAL Flags parsing error: <sentence>" before exiting with status 1.

  Why the first part wraps the flag's private `_parse`: the override fails inside it, before any
  public hook runs. ml_collections' public `accept_new_attributes=True` (which needs an unlocked
  config) would let an unknown field of a known section through to the validator, but an unknown
  section (`--config.lpq.eps`) still raises KeyError inside `_parse`.
  """
  from absl import flags  # noqa: late import: the library itself does not need absl flags
  flag = flags.FLAGS[config_flag.name]
  parse = flag._parse  # noqa: SLF001 (the one place the config file and its overrides meet)

  def checked_parse(argument):
    try:
      return parse(argument)
    except (AttributeError, KeyError):
      known = flatten(flag.parser.parse(argument))
      prefix = f'--{flag.name}.'
      for arg in flags.FLAGS.read_flags_from_files(sys.argv, force_gnu=False):
        path = arg.split('=', 1)[0][len(prefix):] if arg.startswith(prefix) else None
        if path and path not in known and not any(k.startswith(path + '.') for k in known):
          raise flags.IllegalFlagValueError(unknown_key_message(path, known)) from None
      raise

  flag._parse = checked_parse  # noqa: SLF001

  def validate(config) -> bool:
    if config is not None:
      try:
        check(config, defaults=flag.parser.parse(flag.config_filename))
      except ConfigError as e:  # not a ValidationError: absl would prefix the whole config
        raise flags.IllegalFlagValueError(str(e)) from None
    return True

  flags.register_validator(flag.name, validate)
