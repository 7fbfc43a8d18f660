"""One validation of a whole run config, before any data is read or any stage is trained.

  validation.check(config, defaults=digits.get_config(), devices=8)   # raises ConfigError
  validation.install_flag_checks(common.CONFIG)   # launchers: the same at flag-parsing time

Three kinds of checks, every problem one sentence that names the field and what to set:
  * types: every field against the type of its default (the config file loaded without overrides),
    so a field someone adds to configs/common.py is checked without a rule here; None only where the
    default is None (a placeholder); tuple and list elements too. A field the defaults lack is an
    unknown key, reported with the closest known names (difflib).
  * RULES below: ranges and allowed values per field (shell-style patterns, `*.eps` matches lpa.eps
    and vae.eps). Allowed names are read from the registries that use them, never copied.
  * cross-field checks (`_cross_checks`, run once the rules pass, so they may trust the rules'
    types): classes disjoint and present in the dataset, decoder and
    classifier geometry, k <= number of classes, batch sizes divisible by the device count.

Why at flag-parsing time as well as in `experiment.prepare`: the launcher then exits with absl's
one-line "FATAL Flags parsing error" before JAX starts; `prepare` repeats the check for Python
callers and adds the device count, known only once JAX (and a distributed run) is initialised.
"""

import difflib
import fnmatch
import math
import sys
import typing
from typing import Any, Callable

import ml_collections

from mip_jax import defenses
from mip_jax.attacks import suite, transforms
from mip_jax.data import KNOWN_DATASETS
from mip_jax.data.splits import CLASS_COUNTS, QUERY_PARTS
from mip_jax.defenses import lpa, purification, space
from mip_jax.losses import alignment, hsic, reconstruction
from mip_jax.models import conv_transpose
from mip_jax.models.decoder import check_geometry


class ConfigError(ValueError):
  """A config value that cannot run; the message says which field to change and to what."""


# ---------------------------------------------------------------- rules: value -> problem or None

Rule = Callable[[Any], str | None]


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def above(lo: float) -> Rule:
  return lambda v: None if _number(v) and v > lo else f'must be > {lo}'


def at_least(lo: float) -> Rule:
  return lambda v: None if _number(v) and v >= lo else f'must be >= {lo}'


def within(lo: float, hi: float, *, open_lo=False, open_hi=False) -> Rule:
  def rule(v):
    ok = _number(v) and (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)
    return None if ok else f'must lie in {"(" if open_lo else "["}{lo}, {hi}{")" if open_hi else "]"}'
  return rule


def one_of(known: Callable[[], typing.Iterable]) -> Rule:
  """`known` is called at check time, so names registered after import count."""
  def rule(v):
    names = list(known())
    if v in names:
      return None
    close = difflib.get_close_matches(str(v), [str(n) for n in names], n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    return f'must be one of {", ".join(map(repr, names))}{hint}'
  return rule


def optional(rule: Rule) -> Rule:
  return lambda v: None if v is None else rule(v)


def each(rule: Rule, *, nonempty: bool = True, ascending: bool = False) -> Rule:
  def check(v):
    if nonempty and not v:
      return 'must not be empty'
    for x in v:
      problem = rule(x)
      if problem:
        return f'has entry {x!r} that {problem}'
    if ascending and list(v) != sorted(v):
      return 'must be in ascending order'
    return None
  return check


POSITIVE = above(0)
NON_NEGATIVE = at_least(0)
UNIT_OPEN = within(0, 1, open_lo=True, open_hi=True)
MODES = one_of(lambda: lpa.MODES)
DISTANCES = one_of(lambda: alignment.DISTANCES)
LOSSES = one_of(lambda: reconstruction.LOSSES)

# Every matching pattern applies. A pattern that matches no field is ignored, so a rule may wait for
# its field. Fields without a rule still get the type check. None skips the rules: whether a field
# may be None (a placeholder such as substitute.width, "inherit") is the type check's decision.
RULES: dict[str, tuple[Rule, ...]] = {
    'dataset': (one_of(lambda: KNOWN_DATASETS),),
    'image_size': (above(0),),
    'channels': (one_of(lambda: (1, 3)),),
    'seed': (NON_NEGATIVE,),
    'test_fraction': (UNIT_OPEN,),
    'max_per_split': (optional(above(0)),),
    '*_classes': (each(at_least(0)),),
    '*.epochs': (NON_NEGATIVE,),
    '*.batch_size': (POSITIVE,),
    '*.learning_rate': (POSITIVE,),
    '*.eps': (POSITIVE,),
    '*.steps': (NON_NEGATIVE,),
    '*.tau': (POSITIVE,),
    '*.restarts': (at_least(1),),
    '*.milestones': (each(UNIT_OPEN, nonempty=False, ascending=True),),
    '*.mode': (MODES,),
    '*.distance': (DISTANCES,),
    '*.loss': (LOSSES,),
    '*classifier.channels': (each(POSITIVE),),
    '*classifier.hidden_mult': (POSITIVE,),
    '*classifier.dropout': (within(0, 1, open_hi=True),),
    'decoder.width': (POSITIVE,),
    '*.blocks': (one_of(lambda: range(2, 9)),),  # 16 to 1024 pixels
    '*.extra_blocks': (NON_NEGATIVE,),
    'decoder.b1': (within(0, 1, open_hi=True),),
    'decoder.b2': (within(0, 1, open_hi=True),),
    'decoder.impl': (one_of(lambda: typing.get_args(conv_transpose.Impl)),),
    '*.transform': (one_of(lambda: transforms.TRANSFORMS),),
    '*.data': (one_of(lambda: QUERY_PARTS),),
    'attack.floor': (UNIT_OPEN,),
    'attack.top_k': (optional(above(0)),),
    'attack.log_floor': (lambda v: None if _number(v) and -math.inf < v < 0 else 'must be < 0',),
    'attack.reconstruct_from': (one_of(lambda: ('clean', 'defended')),),
    'attack.adaptive': (one_of(lambda: suite.ADAPTIVE + suite.ZERO_ROBUST),),
    'attack.patience': (optional(above(0)),),
    'attack.val_fraction': (UNIT_OPEN,),
    'attack.adaptive_noise_std': (NON_NEGATIVE,),
    '*.space': (one_of(lambda: space.SPACES),),
    '*.log_bound': (POSITIVE,),
    '*.batchnorm': (one_of(lambda: ('eval', 'train')),),
    '*.objective': (one_of(lambda: lpa.OBJECTIVES),),
    'lpa.ensemble_size': (at_least(1),),
    'lpa.ensemble_vary': (one_of(lambda: ('seed', 'arch')),),
    'lfp.budget': (within(0, 1, open_lo=True),),
    'lfp.threshold': (within(0, 1, open_lo=True),),
    'lfp.eps': (NON_NEGATIVE,),  # 0: reversal only (lfp.py)
    'noise.scale': (NON_NEGATIVE,),
    'onepara.epsilon': (POSITIVE,),
    'onepara.sensitivity': (POSITIVE,),
    'rounding.decimals': (NON_NEGATIVE,),
    'topk.k': (above(0),),
    'grad2.eps': (within(0, 2, open_lo=True),),
    'am.threshold': (within(0, 1, open_lo=True),),
    'am.steepness': (POSITIVE,),
    'tailfloor.threshold': (UNIT_OPEN,),
    'tailfloor.floor': (optional(UNIT_OPEN),),
    'tailfloor.fill': (one_of(lambda: ('floor', 'noise')),),
    'tailfloor.low': (UNIT_OPEN,),
    'vae.latent': (above(0),),
    'vae.hidden': (each(POSITIVE),),
    'vae.*_weight': (NON_NEGATIVE,),
    'vae.alignment': (MODES,),
    'serve.max_batch': (above(0),),
    'mid.beta': (NON_NEGATIVE,),
    'bido.*_lambda_*': (NON_NEGATIVE,),
    'bido.sigma': (POSITIVE,),
    'bido.kernel_y': (one_of(lambda: hsic.KERNELS),),
    'purification.reference': (one_of(lambda: purification.REFERENCES),),
    'purification.width_factors': (each(POSITIVE),),
    'purification.*_weight': (NON_NEGATIVE,),
    'diffusion.timesteps': (above(0),),
    'diffusion.beta_*': (UNIT_OPEN,),
    'diffusion.features': (above(0),),
    'diffusion.drop_prob': (within(0, 1, open_hi=True),),
    'diffusion.guidance': (NON_NEGATIVE,),
    'diffusion.guidances': (each(NON_NEGATIVE),),
    'diffusion.sample_batch_size': (above(0),),
    'eval.eps_grid': (each(NON_NEGATIVE),),
    'eval.num_figure_images': (above(0),),
}


# ---------------------------------------------------------------- the checks

def _leaves(config, prefix: str = ''):
  """(dotted path, its section, key) for every leaf of a nested ConfigDict."""
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield prefix + key, config, key


def flatten(config) -> dict[str, Any]:
  """{'lpa.eps': 0.01, ...}: every leaf of a (nested) ConfigDict by its dotted path."""
  return {path: section[key] for path, section, key in _leaves(config)}


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


def _problem(path: str, value, problem: str) -> str:
  return f'config.{path}={value!r} {problem}: change --config.{path}'


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
          found.append(_problem(path, values[path], problem))
  else:  # without defaults, at least the fields the cross-field checks read must be set
    found += [f'config.{path} is None; set --config.{path}' for path in CROSS_FIELDS
              if path in values and values[path] is None]
  if found:  # rules assume the types are right
    return found
  for pattern, rules in RULES.items():
    for path in fnmatch.filter(values, pattern):
      if values[path] is None:
        continue
      for rule in rules:
        try:
          problem = rule(values[path])
        except TypeError:  # no defaults given, so the type was not checked first
          problem = f'has the wrong type ({type(values[path]).__name__})'
        if problem:
          found.append(_problem(path, values[path], problem))
          break
  return found or _cross_checks(config, values, devices)


# Fields `_cross_checks` reads; never placeholders. (ConfigDict.copy_and_resolve_references turns a
# placeholder into a plain None, so a config's own types cannot tell a placeholder from a mistake.)
CROSS_FIELDS = ('dataset', 'image_size', 'channels', 'private_classes', 'attack_classes',
                'decoder.blocks', 'classifier.channels', 'eval_classifier.channels')


def _cross_checks(config, values: dict, devices: int | None) -> list[str]:
  found = []
  private, attack = list(config.private_classes), list(config.attack_classes)
  count = CLASS_COUNTS.get(config.dataset)
  m = count and len(private)  # FaceScrub: identities decide, private_classes are ignored
  if count is not None:
    for field, classes in (('private_classes', private), ('attack_classes', attack)):
      bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < count)]
      if not classes or bad or len(set(classes)) != len(classes):
        found.append(f'config.{field}={classes} must be distinct, non-empty labels of '
                     f'{config.dataset} in [0, {count}): change --config.{field}')
    if not found and set(private) & set(attack):
      found.append(f'config.private_classes and config.attack_classes must be disjoint but share '
                   f'{sorted(set(private) & set(attack))}: change one of them')
  try:
    check_geometry((config.image_size, config.image_size, config.channels), config.decoder.blocks)
  except ValueError as e:
    found.append(str(e))
  for section in ('classifier', 'eval_classifier'):
    blocks = len(config[section].channels)
    if config.image_size < 2 ** blocks:
      found.append(f'config.{section}.channels has {blocks} conv blocks, each halving the image, '
                   f'too many for image_size {config.image_size}: drop blocks or raise image_size')
  for path in ('attack.top_k', 'topk.k'):
    if m and path in values and values[path] is not None and values[path] > m:
      found.append(_problem(path, values[path], f'must be <= {m}, the number of private classes'))
  if devices:
    for path in fnmatch.filter(values, '*.batch_size'):
      if values[path] is not None and values[path] % devices:
        found.append(_problem(path, values[path], f'must be a multiple of the {devices} devices '
                              '(each step splits its batch over them)'))
  return found


def check(config, *, defaults=None, devices: int | None = None) -> None:
  """Raises ConfigError listing every problem of `config`, one sentence each.

  Args:
    config: the run's ConfigDict.
    defaults: the same config file without overrides (types, known keys); None checks only the
      rules and cross-field checks.
    devices: the number of devices batches are split over; None skips that check.
  """
  found = problems(config, defaults=defaults, devices=devices)
  if found:
    raise ConfigError('\n'.join(found) if len(found) > 1 else found[0])


# ---------------------------------------------------------------- launchers (absl flags)

def install_flag_checks(config_flag) -> None:
  """Makes a `config_flags.DEFINE_config_file` flag fail in one sentence at flag-parsing time.

  An unknown override (`--config.lpa.epz=0.1`) raises AttributeError inside ml_collections, outside
  absl's handling of bad values (a traceback); it becomes a sentence with the closest field names.
  Once every flag
  is parsed (overrides applied) a validator runs `check` against the config file's defaults.
  Both raise absl's IllegalFlagValueError, which `app.run` prints as "FATAL Flags parsing error:
  <sentence>" before exiting with status 1.
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
