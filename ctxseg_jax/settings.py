"""Components chosen by name from a config, each owning its settings: defaults, valid values, help.

A backbone, a head or a loss term is a `Component`: a builder plus a table of `Setting`s. A `Registry` holds
the components of one kind (backbones, heads, loss terms) together with the settings every component of that
kind shares (a head's wiring, a loss term's weight). The config schema does not restate any of this: it asks a
registry for a component's ConfigDict (`Registry.config`) and for the problems of one (`Registry.problems`), so a
typo in a key or an invalid value is reported with the key's full path and what is valid before anything runs.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping

import ml_collections


@dataclasses.dataclass(frozen=True)
class Rule:
  """A condition on a value, and how to say it to a user ('must be > 0')."""
  description: str
  holds: Callable[[Any], bool]


POSITIVE = Rule('must be > 0', lambda v: v > 0)
NON_NEGATIVE = Rule('must be >= 0', lambda v: v >= 0)
UNIT_INTERVAL = Rule('must be in [0, 1)', lambda v: 0 <= v < 1)


def _is_int_tuple(value: Any) -> bool:
  return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _is_str_tuple(value: Any) -> bool:
  return isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)


INT_TUPLE = Rule('must be a tuple of integers, e.g. "(1, 2, 3)"', _is_int_tuple)
STR_TUPLE = Rule('must be a tuple of names, e.g. "(\'logits\',)"', _is_str_tuple)
WEIGHT_TUPLE = Rule('must be a tuple of numbers >= 0, e.g. "(1.0, 0.5)"',
                    lambda v: isinstance(v, (tuple, list)) and all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v))


@dataclasses.dataclass(frozen=True)
class Setting:
  """One key of a component's config: its default, what it means, and what values are valid.

  Attributes:
    default: the value a config gets unless it sets another (the reference implementation's).
    help: one line for people reading a config.
    choices: when not empty, the only valid values.
    rule: when given, a condition every value must meet.
  """
  default: Any
  help: str = ''
  choices: tuple[Any, ...] = ()
  rule: Rule | None = None

  def problem(self, key: str, value: Any) -> str | None:
    """A message naming `key`, its value, what is valid and what the key means, or None when the value is fine."""
    if self.choices and value not in self.choices:
      hint = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
      message = (f'config.{key}={value!r} is not valid; choose one of {list(self.choices)}'
                 + (f' (did you mean {hint[0]!r}?)' if hint else ''))
    elif not _same_kind(self.default, value):
      message = f'config.{key}={value!r} must be a {type(self.default).__name__} like the default {self.default!r}'
    elif self.rule is not None and not _holds(self.rule, value):
      message = f'config.{key}={value!r} {self.rule.description}'
    else:
      return None
    return f'{message}. {key.rsplit(".", 1)[-1]}: {self.help}' if self.help else message


def _holds(rule: Rule, value: Any) -> bool:
  try:
    return bool(rule.holds(value))
  except TypeError:
    return False


def _same_kind(default: Any, value: Any) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, (int, float)):
    return isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


Settings = Mapping[str, Setting]


@dataclasses.dataclass(frozen=True)
class Component:
  """A buildable part registered by name.

  Attributes:
    build: (settings ConfigDict, **context) -> the part (a flax Module for models, a function for loss terms).
    settings: the component's own keys.
    outputs: for heads, the names of the outputs the module returns, in order (see models.segmentor).
    doc: a few words shown beside the name where a config names an unknown component.
  """
  build: Callable[..., Any]
  settings: Settings = dataclasses.field(default_factory=dict)
  outputs: tuple[str, ...] = ()
  doc: str = ''


class Registry:
  """The components of one kind, chosen by the value of `key` in a component's ConfigDict.

  Args:
    kind: what the components are, for messages ('backbone', 'head', 'loss term').
    key: the config key that names the component ('name' for a backbone, 'type' for heads and loss terms).
    common: settings every component of this kind has besides its own (e.g. what a head reads).
    components: name -> Component.
  """

  def __init__(self, kind: str, key: str, components: Mapping[str, Component], common: Settings | None = None):
    self.kind, self.key = kind, key
    self.common = dict(common or {})
    self.components = dict(components)
    for name, component in self.components.items():
      clash = (self.common.keys() | {key}) & component.settings.keys()
      if clash:
        raise ValueError(f'{kind} {name!r} redefines the shared settings {sorted(clash)}')

  def __contains__(self, name: str) -> bool:
    return name in self.components

  def __getitem__(self, name: str) -> Component:
    if name not in self.components:
      raise KeyError(f'{name!r} is not a known {self.kind}; choose one of {sorted(self.components)}')
    return self.components[name]

  def names(self) -> list[str]:
    return sorted(self.components)

  def config(self, name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """A locked ConfigDict for component `name`: its shared and own settings at their defaults, then `overrides`.

    Unknown override keys raise at once (KeyError naming the key and the valid ones).
    """
    component = self[name]
    values = {self.key: name}
    values.update({k: s.default for k, s in self.common.items()})
    values.update({k: s.default for k, s in component.settings.items()})
    if 'outputs' in self.common and component.outputs:
      values['outputs'] = component.outputs
    unknown = sorted(set(overrides) - set(values))
    if unknown:
      raise KeyError(f'{self.kind} {name!r} has no settings {unknown}; it has {sorted(values)}')
    values.update(overrides)
    config = ml_collections.ConfigDict(values)
    config.lock()
    return config

  def problems(self, prefix: str, config: ml_collections.ConfigDict) -> list[str]:
    """Every problem of the component config at `prefix` (e.g. 'model.heads.decode_head'), as messages."""
    name = config.get(self.key)
    if name not in self.components:
      hint = difflib.get_close_matches(str(name), self.names(), n=1)
      listing = ', '.join(f'{n!r} ({self.components[n].doc})' if self.components[n].doc else repr(n)
                          for n in self.names())
      return [f'config.{prefix}.{self.key}={name!r} is not a known {self.kind}; choose one of {listing}'
              + (f' (did you mean {hint[0]!r}?)' if hint else '')]
    component = self.components[name]
    valid = {**self.common, **component.settings}
    errors = []
    for key in sorted(set(config.keys()) - set(valid) - {self.key}):
      hint = difflib.get_close_matches(key, list(valid), n=1)
      errors.append(f'config.{prefix}.{key} is not a setting of {self.kind} {name!r}; it has {sorted(valid)}'
                    + (f' (did you mean {hint[0]!r}?)' if hint else ''))
    for key in sorted(set(valid) - set(config.keys())):
      errors.append(f'config.{prefix}.{key} is missing; build {self.kind} configs with their registry\'s '
                    f'config({name!r}, ...) so that every setting is there')
    for key, setting in valid.items():
      if key in config:
        problem = setting.problem(f'{prefix}.{key}', config[key])
        if problem:
          errors.append(problem)
    return errors


def set_entry(parent: ml_collections.ConfigDict, name: str, value: ml_collections.ConfigDict | None) -> None:
  """Adds, replaces (`value`) or removes (None) the entry `name` of a locked ConfigDict and locks it again."""
  with parent.unlocked():
    if value is None:
      if name in parent:
        del parent[name]
    else:
      parent[name] = value
  parent.lock()
