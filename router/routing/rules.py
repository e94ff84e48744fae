"""Routing rules: the ``when`` conditions of ``router.yaml``, compiled once at load.

A condition is a tree. Leaves test one feature of the request
(:class:`router.routing.features.Features`) and inner nodes combine them::

    when:
      complexity: simple               # equality (a string with * ? [ is a glob)
      requested_tier: [opus, sonnet]   # one of
      input_tokens: {gt: 1000, lte: 8000}   # eq ne lt lte gt gte in not_in glob
      any: [{tools: {gt: 0}}, {images: {gt: 0}}]
      not: {app: cli}

Several keys in one mapping must all hold. A tuple feature (``tool_names``) matches when any of
its items matches. Compiling checks feature names, operators and value types, so a typo is a load
error that names the rule and line, never a rule that silently never matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from router.config import Config, ModelConfig, ModelPrice, RuleConfig, Tier
from router.config_file import (
    NO_OVERRIDES,
    ConfigError,
    LoadedConfig,
    Overrides,
    load_config,
    located,
    parse_config,
)
from router.routing.features import Features
from router.routing.rule_checks import target_problems, unpriced

Kind = Literal["number", "string", "bool", "strings"]
"""How a feature's values compare: numbers order, strings glob, tuples of strings match any."""

_GLOB_CHARS = frozenset("*?[")
_ORDER_OPS = {"lt", "lte", "gt", "gte"}
_ALL_OPS = _ORDER_OPS | {"eq", "ne", "in", "not_in", "glob"}
_COMBINATORS = {"all", "any", "not"}


class Condition(Protocol):
    """A compiled test on a request's features."""

    def __call__(self, features: Any) -> bool:
        """Return whether the features satisfy the condition."""

    def describe(self) -> str:
        """Return the condition as one line a person reads."""

    def tested(self) -> frozenset[str]:
        """Return the names of the features the condition reads."""


def feature_kinds(features_type: type) -> dict[str, Kind]:
    """Return each field of a features record (a Struct) with how its values compare."""
    hints = typing.get_type_hints(features_type)
    return {f.name: _kind_of(hints[f.name]) for f in msgspec.structs.fields(features_type)}


def _kind_of(hint: Any) -> Kind:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind_of(args[0])
    if hint is bool:
        return "bool"
    if hint in (int, float):
        return "number"
    if origin is tuple:
        return "strings"
    return "string"


class RuleError(ValueError):
    """A condition that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class _Test:
    feature: str
    op: str
    value: Any
    kind: Kind
    check: Callable[[Any], bool]

    def __call__(self, features: Any) -> bool:
        return self.check(getattr(features, self.feature))

    def describe(self) -> str:
        return f"{self.feature} {self.op} {self.value!r}"

    def tested(self) -> frozenset[str]:
        return frozenset((self.feature,))


@dataclass(frozen=True, slots=True)
class _All:
    parts: tuple[Condition, ...]

    def __call__(self, features: Any) -> bool:
        return all(part(features) for part in self.parts)

    def describe(self) -> str:
        return " and ".join(_wrap(p) for p in self.parts) if self.parts else "always"

    def tested(self) -> frozenset[str]:
        return frozenset().union(*(p.tested() for p in self.parts))


@dataclass(frozen=True, slots=True)
class _Any:
    parts: tuple[Condition, ...]

    def __call__(self, features: Any) -> bool:
        return any(part(features) for part in self.parts)

    def describe(self) -> str:
        return " or ".join(_wrap(p) for p in self.parts) if self.parts else "never"

    def tested(self) -> frozenset[str]:
        return frozenset().union(*(p.tested() for p in self.parts))


@dataclass(frozen=True, slots=True)
class _Not:
    part: Condition

    def __call__(self, features: Any) -> bool:
        return not self.part(features)

    def describe(self) -> str:
        return f"not {_wrap(self.part)}"

    def tested(self) -> frozenset[str]:
        return self.part.tested()


def _wrap(condition: Condition) -> str:
    text = condition.describe()
    return f"({text})" if isinstance(condition, _All | _Any) and len(condition.parts) > 1 else text


ALWAYS: Condition = _All(())


def leaf_tests(condition: Condition) -> Iterator[_Test]:
    """The feature tests a condition is made of, however nested."""
    if isinstance(condition, _Test):
        yield condition
    for part in (condition.parts if isinstance(condition, _All | _Any)
                 else (condition.part,) if isinstance(condition, _Not) else ()):
        yield from leaf_tests(part)


def compile_condition(spec: Any, kinds: Mapping[str, Kind], where: str = "when") -> Condition:
    """Compile a ``when`` mapping into a :class:`Condition`.

    Raises:
        RuleError: an unknown feature or operator, or a value of the wrong type.
    """
    if spec is None:
        return ALWAYS
    if not isinstance(spec, Mapping):
        raise RuleError(f"{where}: expected a mapping of feature tests, got {type(spec).__name__}")
    parts: list[Condition] = []
    for key, value in spec.items():
        path = f"{where}.{key}"
        if key in ("all", "any"):
            if not isinstance(value, list):
                raise RuleError(f"{path}: expected a list of conditions")
            inner = tuple(
                compile_condition(v, kinds, f"{path}[{i}]") for i, v in enumerate(value)
            )
            parts.append(_All(inner) if key == "all" else _Any(inner))
        elif key == "not":
            parts.append(_Not(compile_condition(value, kinds, path)))
        elif key in kinds:
            parts.extend(_tests(key, value, kinds[key], path))
        else:
            close = difflib.get_close_matches(str(key), [*kinds, *_COMBINATORS], n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see `router explain` for the list"
            raise RuleError(f"{path}: unknown feature '{key}' ({hint})")
    return parts[0] if len(parts) == 1 else _All(tuple(parts))


def _tests(feature: str, value: Any, kind: Kind, path: str) -> list[Condition]:
    if isinstance(value, Mapping):
        if not value:
            raise RuleError(f"{path}: empty test")
        return [_test(feature, str(op), v, kind, f"{path}.{op}") for op, v in value.items()]
    if isinstance(value, list):
        return [_test(feature, "in", value, kind, path)]
    op = "glob" if isinstance(value, str) and _GLOB_CHARS & set(value) else "eq"
    return [_test(feature, op, value, kind, path)]


def _test(feature: str, op: str, value: Any, kind: Kind, path: str) -> _Test:
    if op not in _ALL_OPS:
        raise RuleError(f"{path}: unknown operator '{op}' (one of {', '.join(sorted(_ALL_OPS))})")
    if op in _ORDER_OPS and kind != "number":
        raise RuleError(f"{path}: '{op}' compares numbers, but '{feature}' is a {kind}")
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise RuleError(f"{path}: '{op}' takes a non-empty list")
        for item in value:
            _check_scalar(feature, item, kind, path)
        options = tuple(value)
        match = _member(options, kind)
        check = match if op == "in" else _negate(match)
        return _Test(feature, op, options, kind, check)
    _check_scalar(feature, value, kind, path)
    if op == "glob":
        if kind not in ("string", "strings") or not isinstance(value, str):
            raise RuleError(f"{path}: 'glob' matches strings, but '{feature}' is a {kind}")
        return _Test(feature, op, value, kind, _member((value,), kind))
    return _Test(feature, op, value, kind, _compare(op, value, kind))


def _check_scalar(feature: str, value: Any, kind: Kind, path: str) -> None:
    ok = {
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "string": isinstance(value, str),
        "strings": isinstance(value, str),
    }[kind]
    if not ok:
        expected = {"number": "a number", "bool": "true or false", "string": "a string",
                    "strings": "a string"}[kind]
        raise RuleError(f"{path}: '{feature}' takes {expected}, got {value!r}")


def _matches(pattern: str, actual: str | None) -> bool:
    if actual is None:
        return False
    return fnmatchcase(actual, pattern) if _GLOB_CHARS & set(pattern) else actual == pattern


def _member(options: tuple[Any, ...], kind: Kind) -> Callable[[Any], bool]:
    if kind == "strings":
        return lambda items: any(_matches(o, item) for item in items for o in options)
    if kind == "string":
        return lambda actual: any(_matches(o, actual) for o in options)
    return lambda actual: actual in options


def _negate(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda actual: not check(actual)


def _compare(op: str, value: Any, kind: Kind) -> Callable[[Any], bool]:
    if kind in ("string", "strings") and op in ("eq", "ne"):
        match = _member((value,), kind)
        return match if op == "eq" else _negate(match)
    comparisons: dict[str, Callable[[Any], bool]] = {
        "eq": lambda a: bool(a == value),
        "ne": lambda a: bool(a != value),
        "lt": lambda a: bool(a < value),
        "lte": lambda a: bool(a <= value),
        "gt": lambda a: bool(a > value),
        "gte": lambda a: bool(a >= value),
    }
    return comparisons[op]


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule of ``router.yaml``."""

    name: str
    description: str
    condition: Condition
    tier: Tier | None
    model: str | None
    pin: bool
    cap: Tier | None
    floor: Tier | None
    allow_model_switch: bool
    index: int
    """Position in the ``rules`` list."""
    line: int | None

    @property
    def label(self) -> str:
        """How messages name the rule: ``rules[3] 'name' (line 42)``."""
        return f"rules[{self.index}] '{self.name}' (line {self.line})"

    @property
    def routes(self) -> bool:
        """Whether the rule picks a target (else it is a guard: only cap/floor)."""
        return self.pin or self.tier is not None or self.model is not None

    @property
    def names_requested_model(self) -> bool:
        """Whether the rule tests the requested model itself: only such a rule may route a
        model that belongs to no tier (any other goes upstream untouched)."""
        return bool(self.condition.tested() & {"requested_model", "requested_tier"})


_TIER_MEMO_SIZE = 4096
"""Distinct model names remembered per policy; clients choose them, so the memo is bounded."""


@dataclass(frozen=True)
class Policy:
    """A loaded, validated config with its rules compiled: what the pipeline routes by."""

    loaded: LoadedConfig
    rules: tuple[Rule, ...]
    _tiers: dict[str, Tier | None] = field(default_factory=dict, compare=False, repr=False)
    _caps: dict[str, ModelConfig] = field(default_factory=dict, compare=False, repr=False)
    _prices: dict[str, ModelPrice] = field(default_factory=dict, compare=False, repr=False)
    memo: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    """What other modules derive from the policy once, by their own key (the rules' decisions
    by what they read: :mod:`router.routing.ruling`)."""
    model_betas: frozenset[str] = frozenset()
    """Every beta some model lists as model-specific (``models.*.betas``)."""
    shadow: Policy | None = None
    """The candidate policy named by ``shadow:``, evaluated beside this one."""

    def __post_init__(self) -> None:
        config = self.config
        for model, caps in config.models.items():
            for name in (model, *caps.aliases):
                self._caps[name] = caps
        if config.pricing is not None:
            for model, price in config.pricing.models.items():
                for name in (model, *price.aliases):
                    self._prices[name] = price
        betas = frozenset(b for caps in config.models.values() for b in caps.betas)
        object.__setattr__(self, "model_betas", betas)

    def caps_of(self, model: str) -> ModelConfig | None:
        """What a model can serve, or None when ``models:`` does not list it."""
        return self._caps.get(model)

    def price_of(self, model: str) -> ModelPrice | None:
        """A model's list prices, or None when it has none."""
        return self._prices.get(model)

    def tier_of(self, model: str) -> Tier | None:
        """The tier of a model id (memoised :meth:`router.config.Config.tier_of_model`)."""
        try:
            return self._tiers[model]
        except KeyError:
            pass
        tier = self.config.tier_of_model(model)
        if len(self._tiers) < _TIER_MEMO_SIZE:
            self._tiers[model] = tier
        return tier

    @property
    def config(self) -> Config:
        """The decoded config."""
        return self.loaded.config

    def with_config(self, config: Config) -> Policy:
        """Return this policy with ``config`` in place of its own: the same compiled rules,
        source, hash and lines (for settings changed in code, never for new rules)."""
        return Policy(dataclasses.replace(self.loaded, config=config), self.rules,
                      shadow=self.shadow)


def load_policy(path: str | None = None, *, overrides: Overrides = NO_OVERRIDES) -> Policy:
    """Load a config file (or the embedded default) and compile its rules.

    ``overrides`` (from the environment) change it as :func:`router.config_file.load_config` says.

    Raises:
        ConfigError: with one line per problem, each naming the key and its YAML line.
    """
    return with_shadow(compile_policy(load_config(path, overrides=overrides)), overrides)


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Like :func:`load_policy`, from config text (``source`` names the file a relative
    ``shadow:`` path is read beside)."""
    return with_shadow(compile_policy(parse_config(text, source)))


def with_shadow(policy: Policy, overrides: Overrides = NO_OVERRIDES) -> Policy:
    """Return ``policy`` with the candidate its ``shadow:`` names loaded and compiled, and
    the candidate's file among those whose change reloads the config.

    Raises:
        ConfigError: the candidate cannot be read or is invalid (each problem named as the
            candidate's), or names a shadow of its own.
    """
    name = policy.config.shadow
    if name is None:
        return policy
    path = shadow_path(policy)
    assert path is not None
    where = f"shadow (line {policy.loaded.line_of('$.shadow')})"
    try:
        shadow = compile_policy(load_config(str(path), overrides=overrides))
    except ConfigError as err:
        raise ConfigError(policy.loaded.source,
                          [f"{where}: {err.source}: {p}" for p in err.problems]) from err
    if shadow.config.shadow is not None:
        raise ConfigError(policy.loaded.source,
                          [f"{where}: {path} names a shadow of its own; a candidate has none"])
    loaded = dataclasses.replace(policy.loaded, files=(*policy.loaded.files, str(path)))
    return dataclasses.replace(policy, loaded=loaded, shadow=shadow)


def shadow_path(policy: Policy) -> Path | None:
    """The file ``shadow:`` names, relative to the config file's directory (or the working
    directory for a config that is not a file); None without one."""
    name = policy.config.shadow
    if name is None:
        return None
    source = Path(policy.loaded.source)
    base = source.parent if source.is_file() else Path.cwd()
    return base / Path(name).expanduser()


def compile_policy(loaded: LoadedConfig) -> Policy:
    """Compile the rules of a loaded config, reporting every problem at once.

    Raises:
        ConfigError: a rule is malformed, names an unknown feature, model or tier, or can never
            match because an earlier rule always wins.
    """
    kinds = feature_kinds(Features)
    config = loaded.config
    problems: list[str] = []
    rules: list[Rule] = []
    names: set[str] = set()
    for index, raw in enumerate(config.rules):
        path = f"$.rules[{index}]"
        line = loaded.line_of(path)
        try:
            spec = msgspec.convert(raw, RuleConfig, strict=True)
        except msgspec.ValidationError as exc:
            problems.append(located(str(exc), loaded.lines, root=path))
            continue
        label = f"rules[{index}] '{spec.name}'"
        try:
            condition = compile_condition(spec.when, kinds)
        except RuleError as exc:
            where = str(exc).split(":", 1)[0]
            problems.append(f"{label} (line {loaded.line_of(f'{path}.{where}')}): {exc}")
            continue
        found = target_problems(spec)
        if spec.name in names:
            found.append("another rule has this name")
        names.add(spec.name)
        problems.extend(f"{label} (line {line}): {p}" for p in found)
        if not found:
            rules.append(Rule(spec.name, spec.description, condition, spec.tier, spec.model,
                              spec.pin, spec.cap, spec.floor, spec.allow_model_switch, index,
                              line))
    problems.extend(_unreachable(rules))
    default = config.default
    if default not in config.tiers and default != "requested" and not default.startswith("claude"):
        problems.append(f"default (line {loaded.line_of('$.default')}): '{default}' is neither "
                        "a tier (haiku, sonnet, opus), 'requested', nor a claude-* model id")
    problems.extend(unpriced(loaded, rules))
    if problems:
        raise ConfigError(loaded.source, problems)
    return Policy(loaded, tuple(rules))


def _unreachable(rules: list[Rule]) -> list[str]:
    """Routing rules shadowed by an earlier one that always matches, or by the same condition."""
    problems = []
    seen: dict[str, Rule] = {}
    catch_all: Rule | None = None
    for rule in rules:
        if not rule.routes:
            continue
        key = rule.condition.describe()
        earlier = catch_all or seen.get(key)
        if earlier is not None:
            why = "always matches" if earlier is catch_all else "has the same condition"
            problems.append(f"{rule.label}: unreachable: rule '{earlier.name}' "
                            f"(line {earlier.line}) comes first and {why}")
            continue
        seen[key] = rule
        if rule.condition is ALWAYS:
            catch_all = rule
    return problems
