"""The experiment settings: one table drives the environment variables, the command-line flags and
their validation. A flag wins over its environment variable, which wins over the default."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ntn.arguments import OneLineParser
from ntn.errors import NtnError
from ntn.files import file_stem
from ntn.threads import training_threads
from ntn.tracking import Redactor, installed

from experiments.dataset_loader import DATASETS, PREPROCESSING

MODELS = ("mpo2", "lmpo2", "mmpo2")


class SettingError(NtnError, ValueError):
    """A setting's value is not allowed; the message names the variable and what is allowed."""


MAX_INTEGER = 2**31 - 1  # every count and seed fits a C int (torch, numpy), so none overflows mid-run


def integer(minimum: int) -> Callable[[str], int]:
    allowed = f"must be an integer >= {minimum} and <= {MAX_INTEGER}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise SettingError(allowed) from None
        if not minimum <= value <= MAX_INTEGER:
            raise SettingError(allowed)
        return value

    return parse


def real(low: float, high: float = float("inf"), low_open: bool = False) -> Callable[[str], float]:
    allowed = f"a number {'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high != float("inf") else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise SettingError(f"must be {allowed}") from None
        if not math.isfinite(value):
            raise SettingError(f"must be a finite number: {allowed}")
        if not (value > low if low_open else value >= low) or not value <= high:
            raise SettingError(f"must be {allowed}")
        return value

    return parse


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise SettingError(f"must be one of: {', '.join(options)}")
        return text

    return parse


def n_samples(text: str) -> int:
    if text.strip().lower() == "all":
        return 0
    return integer(0)(text)


def workers(text: str) -> int:
    """auto (recorded as 0) or a count of processes."""
    if text.strip().lower() == "auto":
        return 0
    try:
        return integer(0)(text)
    except SettingError:
        raise SettingError(f"must be auto (0) or an integer >= 1 and <= {MAX_INTEGER}") from None


def seeds(text: str) -> list[int]:
    parts = text.split(",")
    if not text.strip() or any(not re.fullmatch(r"[0-9]+", p.strip()) for p in parts):
        raise SettingError("must be a comma-separated list of integers >= 0, e.g. 0,1,2")
    values = [int(p) for p in parts]
    if max(values) > MAX_INTEGER:
        raise SettingError(f"must hold integers <= {MAX_INTEGER}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise SettingError(f"must not repeat a seed (repeated: {', '.join(map(str, repeated))})")
    return values


def device(text: str) -> str:
    """The device's name as asked for; whether it exists here is checked before training."""
    name = text.strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise SettingError("must be auto, cpu, cuda or cuda:N")


def boolean(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise SettingError("must be true or false")


def text(value: str) -> str:
    return value


@dataclass(frozen=True)
class Setting:
    """One setting as the scripts take it: its variable, its flag, its default as text, its parser."""

    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    backend: str | None = None  # a plugin's own variable, which that plugin reads from the environment

    @property
    def has_flag(self) -> bool:
        return self.backend is None

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")

    @property
    def dest(self) -> str:
        return self.env.lower()


def setting(default: str, parse: Callable[[str], Any], help: str, backend: str | None = None) -> Any:
    """A field of `Settings`: its variable is the field's name in upper case; `backend`: the tracker plugin
    whose own variable it is (no flag; recorded only in the runs that backend tracks)."""
    return field(metadata={"setting": (default, parse, help, backend)})


@dataclass(frozen=True)
class Settings:
    """One experiment's settings, parsed and checked (`resolve`). Each field declares its variable (the
    field's name in upper case), its default, its parser and its help: `SETTINGS` is made from them."""

    dataset: str = setting("california_housing", choice(DATASETS), "data set")
    n_samples: int = setting("500", n_samples, "seeded subsample size; 0 or 'all' for every row")
    l: int = setting("3", integer(2), "number of sites (polynomial degree)")
    bond_dim: int = setting("6", integer(1), "bond dimension")
    output_site: int = setting("1", integer(0), "site of the output index, in [0, L)")
    init_strength: float = setting("0.1", real(0, low_open=True), "standard deviation of the initial cores")
    reduction_factor: float = setting("0.5", real(0, 1, low_open=True), "LMPO2: rank = max(2, int(phys_dim × factor))")
    batch_size: int = setting("100", integer(1), "samples per mini-batch (memory only; results do not depend on it)")
    n_epochs: int = setting("10", integer(0), "sweeps over the cores")
    jitter_start: float = setting("0.2", real(0), "ridge λ of epoch 0, relative to each core's mean curvature")
    jitter_decay: float = setting("0.9", real(0, low_open=True), "λ_e = max(JITTER_START · JITTER_DECAY^e, JITTER_MIN)")
    jitter_min: float = setting("1e-6", real(0), "lower bound of λ")
    select: str = setting("val_loss", choice(("val_loss", "reg_loss", "last")), "which epoch's state to keep")
    device: str = setting("auto", device, "where to train: auto (CUDA when available, else cpu), cpu, cuda, cuda:N")
    seeds: list[int] = setting("0,1,2,3,4", seeds, "comma-separated seeds; one tracked run each")  # noqa: RUF009
    workers: int = setting(
        "auto",
        workers,
        "processes training the seeds after the first, side by side on the CPU; auto (0): one per core when "
        "the first seed's time says they would take over 0.1 s one after another, else 1",
    )
    data_seed: int = setting("0", integer(0), "seed of the subsample and the train/validation/test split")
    preprocessing: str = setting("clip", choice(PREPROCESSING), "input scaling, fitted on the training split")
    output_file: str = setting(
        "results_{experiment}.json",
        text,
        "multi-seed results file, one per experiment name (odd "
        "characters replaced and a hash of the name appended, as for run files)",
    )
    verbose: bool = setting("false", boolean, "print one line per epoch")
    save_model: bool = setting(
        "false", boolean, "attach each seed's trained model to its runs (ntn.load_model reads it)"
    )
    tracker_backend: str = setting(
        "file", text, "a backend installed here ({installed}), both (file,aim), none, or several, comma-separated"
    )
    tracker_dir: str = setting("experiment_logs", text, "directory of the file backend", backend="file")
    aim_repo: str = setting(".aim", text, "Aim repository: a path or aim://host:port", backend="aim")
    experiment_name: str = setting("{model}_experiment", text, "base name; runs are named {EXPERIMENT_NAME}_seed{seed}")


def run_name(s: Settings, seed: int) -> str:
    """The tracked run of `seed`: `{EXPERIMENT_NAME}_seed{seed}`."""
    return f"{s.experiment_name}_seed{seed}"


SETTINGS = [Setting(f.name.upper(), *f.metadata["setting"]) for f in fields(Settings)]
# the settings that do not change what a run trains: a recorded run with other values still counts
NOT_TRAINING = (
    *("seeds", "workers", "output_file", "verbose", "save_model"),
    *("tracker_backend", "tracker_dir", "aim_repo", "device"),
)


def training(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings (by field name) that decide what a run trains; the experiment's name among them."""
    return {k: v for k, v in settings.items() if k in {f.name for f in fields(Settings)} and k not in NOT_TRAINING}


def build_parser(model: str) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=f"run_{model}.sh",
        description=f"Train {model.upper()} for each seed and track every run. Each flag's environment "
        "variable is given in brackets; a flag wins over its variable.",
        epilog="Exit codes: 0 every seed trained; 1 some seed failed (recorded as failed, the others went on); "
        "2 bad input or the experiment already being trained, nothing trained; 130/143/129 stopped by "
        "SIGINT/SIGTERM/SIGHUP, the run recorded as interrupted.",
    )
    backends = ", ".join(sorted(installed()))  # the plugins' entry points, none imported
    for s in SETTINGS:
        if s.has_flag:
            parser.add_argument(
                s.flag,
                dest=s.dest,
                default=None,
                metavar=s.env,
                help=f"{s.help.replace('{installed}', backends)} [{s.env}, default {s.default}]",
            )
    plugins = [s for s in SETTINGS if not s.has_flag]
    parser.epilog += " The tracker plugins read their own variables: " + "; ".join(
        f"{s.env} ({s.help}, default {s.default})" for s in plugins
    )
    return parser


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether `b` is `a` with one character inserted, removed, replaced, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        )
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def check_spelling(environ: dict[str, str]) -> None:
    """Refuse a variable that is one edit from a setting's (BOND_DIMM for BOND_DIM): it would be ignored, and
    the run would silently train the default instead. Names of 4 characters or fewer are not compared.

    :raises SettingError: naming the variable and the setting it looks like
    """
    known = {x.env for x in SETTINGS}
    for name in sorted(environ):
        close = [x for x in sorted(known) if len(x) > 4 and _one_edit_apart(name, x)]
        if name not in known and close:
            raise SettingError(f"{name} is not a setting; did you mean {close[0]}? (unset {name}, or rename it)")


def resolve(model: str, argv: list[str] | None = None) -> Settings:
    """Every setting's value, parsed and checked; SettingError names the variable (or flag) at fault."""
    args = build_parser(model).parse_args(argv)
    check_spelling(dict(os.environ))
    try:
        threads = training_threads()
    except ValueError as err:
        raise SettingError(str(err)) from None
    raws: dict[str, tuple[str, str]] = {}
    for s in SETTINGS:
        flag_value = getattr(args, s.dest, None)
        source, raw = (s.flag, flag_value) if flag_value is not None else (s.env, os.environ.get(s.env))
        if raw is not None and raw != "":
            raws[s.dest] = (source, raw)
    s = settings_of(model, raws)
    within_cores(threads or 0, "TORCH_THREADS")
    within_cores(s.workers, raws.get("workers", ("WORKERS",))[0])
    if s.workers > 1 and threads != 1:
        asked = f"TORCH_THREADS={threads}" if threads else "OMP_NUM_THREADS or MKL_NUM_THREADS"
        raise SettingError(f"WORKERS={s.workers} trains each seed at one torch thread, but {asked} asks for more")
    return s


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def within_cores(count: int, source: str) -> None:
    """Refuse more processes or threads (`count`, given by `source`) than the cores this process may use:
    each would slow the others (TORCH_THREADS=1000 trained 36× slower; WORKERS=1000 forked a process per seed).

    :raises SettingError: naming `source`, `count` and the most allowed
    """
    cores = usable_cores()
    if count > cores:
        raise SettingError(
            f"{source}={count} is more than the {cores} cores this process may use; give at most {cores}"
        )


def settings_of(model: str, raws: dict[str, tuple[str, str]]) -> Settings:
    """Settings from raw values, `dest` → (where it came from, text); a setting not given takes its default.

    :raises SettingError: names where the value at fault came from and what is allowed
    """
    values: dict[str, Any] = {}
    for s in SETTINGS:
        source, raw = raws.get(s.dest, (s.env, s.default))
        raw = raw.replace("{model}", model)
        try:
            values[s.dest] = s.parse(raw)
        except SettingError as err:
            raise SettingError(f"{source}={raw!r} {err}") from None
    values["output_file"] = values["output_file"].replace("{experiment}", file_stem(values["experiment_name"]))
    # they name run files, Aim runs and messages: one that holds a secret is refused, never altered or shown
    for dest, what in (("experiment_name", "EXPERIMENT_NAME"), ("output_file", "OUTPUT_FILE")):
        if Redactor().holds_secret(values[dest]):
            raise SettingError(f"{what} holds the value of a secret variable (a token, a password); name it otherwise")
    if not values["output_site"] < values["l"]:
        raise SettingError(f"OUTPUT_SITE={values['output_site']} must be in [0, L) = [0, {values['l']})")
    return Settings(**values)
