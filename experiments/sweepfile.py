"""Sweep files: a TOML file naming a sweep, its model, its seeds, fixed settings and a grid.

    name = "bond_sweep"
    model = "mpo2"                 # or an axis of the grid: model = ["mpo2", "mmpo2"]
    seeds = [0, 1, 2, 3, 4]
    [settings]                     # every configuration's; names as run_*.sh's settings, in lower case
    dataset = "california_housing"
    n_samples = 500
    [grid]                         # one configuration per combination of these values
    bond_dim = [4, 6, 8, 10]
    l = [3, 4]

Each configuration is one experiment, named after the sweep and its grid values
(`bond_sweep_bond_dim4_l3`); a setting named nowhere takes run_*.sh's default (not its environment
variable: the file alone says what the sweep trains). Every value is checked as run_*.sh checks it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ntn.errors import NtnError
from ntn.tracking import Redactor

from experiments.dataset_loader import quality_of
from experiments.settings import MODELS, SETTINGS, SettingError, Settings, seeds, settings_of

KINDS = {f.name: f.type for f in fields(Settings)}  # a setting's type, as written: 'int', 'float', 'str', ...

# settings a sweep file may fix or sweep; the others belong to the sweep itself (seeds, its output) or
# come from the environment as for run_*.sh (the tracker variables)
SWEEPABLE = tuple(
    s.dest
    for s in SETTINGS
    if s.has_flag and s.dest not in ("seeds", "output_file", "experiment_name", "verbose", "tracker_backend")
)
KEYS = ("name", "model", "seeds", "settings", "grid", "search")
SEARCH_KEYS = ("sampler", "trials", "objective", "prune", "space")
SAMPLERS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("median", "hyperband", "none")
RANGE_KEYS = ("low", "high", "log")
MAX_CONFIGURATIONS = 10_000  # a larger grid is refused before it is expanded
_NAME = re.compile(r"[A-Za-z0-9._-]+")


class SweepError(NtnError, ValueError):
    """The sweep file cannot be trained as written; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Configuration:
    """One point of the grid, or one trial of a search: an experiment of its own, trained for every seed."""

    model: str
    values: dict[str, Any]  # the grid's (or the trial's) values at this point, `model` included when swept
    settings: Settings  # experiment_name: the sweep's name and these values (a search's: its trial's number)
    sweep: str = ""  # the sweep's name
    trial: int | None = None  # a search's: the number of its trial in the Optuna study

    @property
    def tracked(self) -> dict[str, Any]:
        """What its runs' trackers get beside the settings: the sweep's name and the values swept here, and a
        search's trial number (a script's experiment, of no sweep: nothing)."""
        if not self.sweep:
            return {}
        return {"sweep": self.sweep, "swept": dict(self.values)} | ({} if self.trial is None else {"trial": self.trial})

    @property
    def quality(self) -> str:
        """The figure its runs are ranked by: r2 (regression) or accuracy (classification)."""
        return quality_of(self.settings.dataset)


@dataclass(frozen=True)
class Range:
    """A search's range of a number setting: integers when the setting is one, else reals."""

    low: int | float
    high: int | float
    log: bool
    integer: bool


@dataclass(frozen=True)
class Search:
    """A `[search]`: Optuna's sampler and pruner, how many trials, what they optimise, over which space."""

    sampler: str
    trials: int
    objective: str  # a validation figure of the runs' entries: val_r2, val_accuracy or val_loss
    prune: str
    space: dict[str, Range | list[Any]]  # a list: the choices

    @property
    def maximise(self) -> bool:
        """Whether the objective is maximised (r2, accuracy) rather than minimised (a loss)."""
        return not self.objective.endswith("loss")


@dataclass(frozen=True)
class Sweep:
    name: str
    seeds: list[int]
    grid: dict[str, list[Any]]  # a search's: {}
    configurations: list[Configuration]  # a search's: none, its trials are decided as it goes
    search: Search | None = None
    model: str | None = None  # the model, unless it is swept
    raws: dict[str, tuple[str, str]] = field(default_factory=dict)  # the fixed settings: dest -> (source, text)
    corners: list[Configuration] = field(default_factory=list)  # a search's: its space's corners, checked

    @property
    def checked(self) -> list[Configuration]:
        """Configurations that stand for all it may train (a grid's all, a search's corners): what a launch
        checks before training (its data sets, devices, trackers)."""
        return self.configurations or self.corners

    def trial(self, number: int, values: dict[str, Any]) -> Configuration:
        """A search's trial `number` with `values` (its experiment `{name}_trial{number}`), its settings checked.

        :raises SettingError: a value the settings refuse
        """
        return _configuration(self, values, f"{self.name}_trial{number}", "search.space", number)


def _configuration(sweep: Sweep, values: dict[str, Any], experiment: str, source: str, trial: int | None = None):
    """The configuration of `values` over the sweep's fixed settings, named `experiment`."""
    model = values.get("model", sweep.model)
    given = sweep.raws | {k: (f"{source}.{k}", _text(v)) for k, v in values.items() if k != "model"}
    given["experiment_name"] = ("name", experiment)
    given["seeds"] = ("seeds", ",".join(map(str, sweep.seeds)))
    return Configuration(model, values, settings_of(model, given), sweep.name, trial)


def _text(value: Any) -> str:
    """A TOML value as run_*.sh would receive it in its environment variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise SettingError(f"must be a number, a string or a boolean, not a {type(value).__name__}")


def _label(value: Any) -> str:
    """A value in an experiment's name: 1e+20 as 1e20 (a "-" would make it 1e-20), other odd characters "-"."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", _text(value).replace("e+", "e"))


def load(path: str | Path, tracker_backend: str | None = None) -> Sweep:
    """The sweep a file describes, every configuration's settings resolved and checked.

    :param tracker_backend: TRACKER_BACKEND of every run (default: $TRACKER_BACKEND, else file)
    :raises SweepError: one line naming the file and what is wrong in it
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SweepError(f"{path}: cannot read the sweep file ({err.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SweepError(f"{path}: not a TOML file: {err}") from None
    try:
        return _sweep(document, tracker_backend or os.environ.get("TRACKER_BACKEND") or "file")
    except SettingError as err:
        raise SweepError(f"{path}: {err}") from None


def _sweep(document: dict[str, Any], tracker_backend: str) -> Sweep:
    unknown = [key for key in document if key not in KEYS]
    if unknown:
        raise SettingError(f"unknown key {unknown[0]!r}; a sweep file has: {', '.join(KEYS)}")
    name = document.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SettingError(f"name={name!r} must be a non-empty string of letters, digits, '.', '_' or '-'")
    if Redactor().text(name) != name:  # it names files, runs and messages: refused, never shown
        raise SettingError("name holds the value of a secret variable (a token, a password); name the sweep otherwise")
    fixed, grid, search = document.get("settings", {}), document.get("grid"), document.get("search")
    if not isinstance(fixed, dict) or not isinstance(grid or {}, dict) or not isinstance(search or {}, dict):
        raise SettingError("[settings], [grid] and [search] must be tables")
    if grid is not None and search is not None:
        raise SettingError("a sweep file has a [grid] or a [search], not both; make one sweep of each")
    if search is not None:
        space = search.get("space", {})
        if not isinstance(space, dict):
            raise SettingError("[search.space] must be a table")
        swept = space
    else:
        swept = grid or {}
        if not swept:
            raise SettingError("[grid] is empty: name at least one setting and its values, e.g. bond_dim = [4, 8]")
    where = "search.space" if search is not None else "grid"
    for key in swept:
        if key not in (*SWEEPABLE, "model"):
            raise SettingError(f"{where}.{key} is not a setting; allowed: model, {', '.join(SWEEPABLE)}")
    for key, values in (grid or {}).items():
        _choices(f"grid.{key}", values)
    size = math.prod(len(values) for values in (grid or {}).values())
    if size > MAX_CONFIGURATIONS:
        raise SettingError(
            f"[grid] makes {size} configurations, more than {MAX_CONFIGURATIONS}; split it into several sweeps"
        )
    for key in fixed:
        if key not in SWEEPABLE:
            raise SettingError(f"settings.{key} is not a setting; allowed: {', '.join(SWEEPABLE)}")
        if key in swept:
            raise SettingError(f"{key} is both in [settings] and in [{where}]; keep it in one")
    model = document.get("model")
    if ("model" in swept) == (model is not None):
        raise SettingError(f'name the model once: model = "mpo2", or model = [...] in [{where}]')
    if model is not None:
        _model(model)
    seed_list = document.get("seeds", [0, 1, 2, 3, 4])
    if not isinstance(seed_list, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed_list):
        raise SettingError(f"seeds={seed_list!r} must be a list of integers >= 0, e.g. [0, 1, 2]")
    try:
        seed_values = seeds(",".join(map(str, seed_list)))
    except SettingError as err:
        raise SettingError(f"seeds={seed_list!r} {err}") from None

    raws = {key: (f"settings.{key}", _text(value)) for key, value in fixed.items()}
    raws["tracker_backend"] = ("TRACKER_BACKEND", tracker_backend)
    raws |= {s.dest: (s.env, os.environ[s.env]) for s in SETTINGS if not s.has_flag and os.environ.get(s.env)}
    sweep = Sweep(name, seed_values, dict(grid or {}), [], None, model, raws)
    if search is not None:
        return _search(sweep, search)
    for point in itertools.product(*grid.values()):
        values = dict(zip(grid, point))
        experiment = "_".join([name] + [_label(v) if k == "model" else f"{k}{_label(v)}" for k, v in values.items()])
        sweep.configurations.append(_configuration(sweep, values, experiment, "grid"))
    _one_quality(sweep.configurations, "the grid")
    return sweep


def _choices(where: str, values: Any) -> list[Any]:
    """A grid's values, or a search's choices: a non-empty list without repeats (models among MODELS)."""
    key = where.rsplit(".", 1)[1]
    if not isinstance(values, list) or not values:
        raise SettingError(f"{where} must be a non-empty list of values, e.g. {key} = [4, 8]")
    try:
        texts = set(map(_text, values))
    except SettingError as err:
        raise SettingError(f"{where}={values!r}: each value {err}") from None
    if len(texts) < len(values):
        raise SettingError(f"{where}={values!r} repeats a value")
    for value in values if key == "model" else ():
        _model(value)
    return values


def _model(value: Any) -> None:
    if value not in MODELS:
        raise SettingError(f"model={value!r} must be one of: {', '.join(MODELS)}")


def _one_quality(configurations: list[Configuration], what: str) -> None:
    if len({c.quality for c in configurations}) > 1:
        raise SettingError(
            f"{what} mixes regression and classification data sets, whose figures (r2, accuracy) cannot be "
            "ranked together; make one sweep of each"
        )


def _search(sweep: Sweep, table: dict[str, Any]) -> Sweep:
    """The sweep with its `[search]` checked: its settings, its space's ranges, and every corner of the space
    (each range's ends, each choice) as a configuration, so that no trial is refused later."""
    unknown = [key for key in table if key not in SEARCH_KEYS]
    if unknown:
        raise SettingError(f"search.{unknown[0]} is not a search setting; allowed: {', '.join(SEARCH_KEYS)}")
    sampler, prune = table.get("sampler", "tpe"), table.get("prune", "median")
    if sampler not in SAMPLERS:
        raise SettingError(f"search.sampler={sampler!r} must be one of: {', '.join(SAMPLERS)}")
    if prune not in PRUNERS:
        raise SettingError(f"search.prune={prune!r} must be one of: {', '.join(PRUNERS)}")
    trials = table.get("trials")
    if type(trials) is not int or not 1 <= trials <= MAX_CONFIGURATIONS:
        raise SettingError(f"search.trials={trials!r} must be an integer >= 1 and <= {MAX_CONFIGURATIONS}")
    space: dict[str, Range | list[Any]] = {}
    for key, given in table.get("space", {}).items():
        space[key] = _range(key, given) if isinstance(given, dict) else _choices(f"search.space.{key}", given)
    if not space:
        raise SettingError(
            "[search.space] is empty: name at least one setting and its range, e.g. bond_dim = {low = 2, high = 8}"
        )
    corners = [[c.low, c.high] if isinstance(c, Range) else c for c in space.values()]
    points = [
        sweep.trial(0, dict(zip(space, p))) for p in itertools.islice(itertools.product(*corners), MAX_CONFIGURATIONS)
    ]
    _one_quality(points, "the search's space")
    objectives = (f"val_{points[0].quality}", "val_loss")
    objective = table.get("objective", objectives[0])
    if objective not in objectives:
        raise SettingError(
            f"search.objective={objective!r} must be one of: {', '.join(objectives)} (a validation figure: the test "
            "split stays held out)"
        )
    if sampler == "grid":
        ranges = [k for k, c in space.items() if isinstance(c, Range) and not (c.integer and not c.log)]
        if ranges:
            raise SettingError(
                f"search.space.{ranges[0]} is a range of reals (or on a log scale): the grid sampler takes lists and "
                "integer ranges; give its values as a list"
            )
        size = math.prod(len(c) if isinstance(c, list) else c.high - c.low + 1 for c in space.values())
        if trials > size:
            raise SettingError(f"search.trials={trials} is more than the {size} points of the grid sampler's space")
    return dataclasses.replace(sweep, search=Search(sampler, trials, objective, prune, space), corners=points)


def _range(key: str, given: dict[str, Any]) -> Range:
    """A range of a number setting, its ends checked by the setting's own parser."""
    where = f"search.space.{key}"
    unknown = [k for k in given if k not in RANGE_KEYS]
    if unknown:
        raise SettingError(f"{where}.{unknown[0]} is not part of a range; a range has: {', '.join(RANGE_KEYS)}")
    kind = KINDS.get(key)
    if kind not in ("int", "float"):
        raise SettingError(f"{where} is not a number setting: give its choices as a list, e.g. {key} = [...]")
    low, high, log = given.get("low"), given.get("high"), given.get("log", False)
    number = int if kind == "int" else int | float
    for end, value in (("low", low), ("high", high)):
        if not isinstance(value, number) or isinstance(value, bool):
            raise SettingError(f"{where}.{end}={value!r} must be {'an integer' if kind == 'int' else 'a number'}")
    if not isinstance(log, bool):
        raise SettingError(f"{where}.log={log!r} must be true or false")
    if not low < high:
        raise SettingError(f"{where}: low={low!r} must be below high={high!r} (a single value goes in [settings])")
    if log and low <= 0:
        raise SettingError(f"{where}: low={low!r} must be > 0 on a log scale")
    return Range(low, high, log, kind == "int")
