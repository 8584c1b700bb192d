"""Test sessions. Each one installs the packages into a fresh virtual environment the way a user would
(`pip install ./core`, `pip install ./plugins/...`), with torch pinned by constraints.txt."""

import os

import nox

nox.options.sessions = ["lint", "core", "file", "aim", "mlflow", "tensorboard", "wandb", "example", "experiments"]
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True

CONSTRAINTS = ("-c", "constraints.txt")
PYTEST = ("python", "-m", "pytest", "-p", "no:cacheprovider", "--durations=5")  # the slowest, in every log
# pytest-xdist, one test process per core, where the tests mostly wait on servers and subprocesses: the aim
# session took 147 s in one process and 91 s in two, the experiments session 204 s and 151 s; the mlflow
# session got slower (47 s → 63 s: each process starts its own server), so it keeps one (docs/benchmarks.md).
PARALLEL = ("-n", "auto")
# the aim tests mostly wait (exit bounds, uploaders, servers): 4 processes beat one per core on 2 cores
# (79 s against 89 s); the experiments tests train, and 4 processes there were slower (176 s against 157 s)
WAITING = ("-n", "4")


def _install(session: nox.Session, *packages: str) -> None:
    # Byte-compiled at install, as pip does by default: `--no-compile` made torch's install 12 s shorter
    # per session, but where PYTHONDONTWRITEBYTECODE is set (as on this project's CI machine) every test
    # process then compiled what it imported, and the suite took a minute longer (docs/benchmarks.md).
    session.install(*CONSTRAINTS, *packages)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install("ruff==0.17.6")  # pinned: a new release must not turn CI red by itself
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "--line-length", "120", ".")


@nox.session
def core(session: nox.Session) -> None:
    """The core package alone: models, trainer, tracking core (no plugin installed)."""
    _install(session, "./core[test]")
    session.run(*PYTEST, "core/tests", *session.posargs)


@nox.session
def file(session: nox.Session) -> None:
    """ntn-tracker-file next to the core, and nothing else."""
    _install(session, "./core[test]", "./plugins/ntn-tracker-file")
    session.run(*PYTEST, "plugins/ntn-tracker-file/tests", *session.posargs)


@nox.session
def aim(session: nox.Session) -> None:
    """ntn-tracker-aim next to the core, against real `aim server` processes and an authenticating proxy."""
    _install(session, "./core[test]", "./plugins/ntn-tracker-aim[test]")
    session.run(*PYTEST, *WAITING, "plugins/ntn-tracker-aim/tests", *session.posargs)


@nox.session
def mlflow(session: nox.Session) -> None:
    """ntn-tracker-mlflow next to the core and the file backend, against a real `mlflow server`."""
    plugin = "./plugins/ntn-tracker-mlflow[test]"
    _install(session, "./core[experiments,test]", "./plugins/ntn-tracker-file", plugin)
    session.run(*PYTEST, "plugins/ntn-tracker-mlflow/tests", *session.posargs)


@nox.session
def tensorboard(session: nox.Session) -> None:
    """ntn-tracker-tensorboard next to the core and the file backend: a script run and a sweep read back with
    TensorBoard's EventAccumulator, and a real `tensorboard` server asked over HTTP."""
    plugin = "./plugins/ntn-tracker-tensorboard[test]"
    _install(session, "./core[experiments,test]", "./plugins/ntn-tracker-file", plugin)
    session.run(*PYTEST, "plugins/ntn-tracker-tensorboard/tests", *session.posargs)


@nox.session
def wandb(session: nox.Session) -> None:
    """ntn-tracker-wandb next to the core and the file backend: the kit, and script runs read back from W&B's
    own offline files (no W&B server: offline, as where no API key is set)."""
    plugin = "./plugins/ntn-tracker-wandb[test]"
    _install(session, "./core[experiments,test]", "./plugins/ntn-tracker-file", plugin)
    session.run(*PYTEST, "plugins/ntn-tracker-wandb/tests", *session.posargs)


@nox.session
def example(session: nox.Session) -> None:
    """The third-party example plugin, installed from its folder, found through its entry point."""
    _install(session, "./core[test]", "./examples/ntn-tracker-jsonl")
    session.run(*PYTEST, "examples/ntn-tracker-jsonl/tests", *session.posargs)


@nox.session
def experiments(session: nox.Session) -> None:
    """What a user installs: the experiment scripts end to end, with the file and aim backends."""
    _install(session, "./core[experiments,plot,search,test]", "./plugins/ntn-tracker-file", "./plugins/ntn-tracker-aim")
    session.run(*PYTEST, *PARALLEL, "tests", *session.posargs, env={"NTN_DATA_DIR": os.environ.get("NTN_DATA_DIR", "")})
