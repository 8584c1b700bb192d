import sys
import textwrap

import pytest

TRACKERS = '''
import json, os
from ntn.tracking import BaseTracker, hookimpl

CALLS = []


class RecordingTracker(BaseTracker):
    """Plain methods, no decorator: the seed's way."""

    def __init__(self, experiment_name, config):
        super().__init__(experiment_name, config)
        CALLS.append((experiment_name, "__init__", {"config": config}))

    def log_hparams(self, hparams):
        CALLS.append((self.experiment_name, "log_hparams", {"hparams": hparams}))

    def log_metrics(self, metrics, step):
        CALLS.append((self.experiment_name, "log_metrics", {"metrics": metrics, "step": step}))

    def log_summary(self, summary):
        CALLS.append((self.experiment_name, "log_summary", {"summary": summary}))

    def finalize(self):
        CALLS.append((self.experiment_name, "finalize", {}))


class FailingTracker(BaseTracker):
    def log_metrics(self, metrics, step):
        if step >= 1:
            raise RuntimeError(f"disk full at step {step}")

    def finalize(self):
        CALLS.append((self.experiment_name, "failing.finalize", {}))


class FailingInit(BaseTracker):
    def __init__(self, experiment_name, config):
        raise ConnectionError("server unreachable")


class BadSignature(BaseTracker):
    def log_metrics(self, data, step):
        pass


class OnlyMetrics:
    """Decorated hookimpl on a class that does not derive from BaseTracker."""

    def __init__(self, experiment_name, config):
        self.name = experiment_name

    @hookimpl
    def log_metrics(self, metrics):
        CALLS.append((self.name, "only_metrics", {"metrics": metrics}))


def make_tracker(experiment_name, config):
    """A factory function rather than a class."""
    return RecordingTracker(experiment_name=experiment_name + "@factory", config=config)


class Noop(BaseTracker):
    pass


class WrapperTracker(BaseTracker):
    @hookimpl(wrapper=True)
    def log_metrics(self, metrics, step):
        return (yield)


class SpecnameTracker:
    def __init__(self, experiment_name, config):
        self.name = experiment_name

    @hookimpl(specname="log_metrics")
    def record_step(self, step):
        CALLS.append((self.name, "specname", {"step": step}))


class FirstTracker(BaseTracker):
    @hookimpl(tryfirst=True)
    def log_metrics(self, metrics, step):
        CALLS.append((self.experiment_name, "first", {}))


class Misspelled(BaseTracker):
    def log_metric(self, metrics, step):
        pass

    def finalise(self):
        pass


def declared_secrets(environ):
    """The `ntn.secrets` declaration of this test distribution: a variable the generic rule cannot know."""
    return [environ.get("NTN_TEST_SESSION", "")]


RUNS = []  # the store of the two plugins below: one record per run started


class GlobalRunTracker(BaseTracker):
    """15 lines on a process-global run, as `wandb.init()` and `wandb.log()` have one: each run started
    makes it the current run, and every hook writes to the current run."""

    current = {}

    def __init__(self, experiment_name, config):
        super().__init__(experiment_name, config)
        self.run = {"experiment_name": experiment_name, "config": config, "metrics_log": [], "summary": {}}
        RUNS.append(self.run)
        GlobalRunTracker.current = self.run

    def target(self):
        return GlobalRunTracker.current

    def log_hparams(self, hparams):
        self.target()["hparams"] = hparams

    def log_metrics(self, metrics, step):
        self.target()["metrics_log"].append({"step": step, **metrics})

    def log_summary(self, summary):
        self.target()["summary"].update(summary)

    def finalize(self, status):
        self.target()["summary"]["status"] = status


class RunObjectTracker(GlobalRunTracker):
    """The same with a run object of its own (W&B's `reinit="create_new"`)."""

    def target(self):
        return self.run


def read_runs(source):
    return list(RUNS), []


class NoSuchHook:
    @hookimpl(specname="log_everything")
    def everything(self):
        pass
'''

ENTRY_POINTS = """
[ntn.trackers]
record = ntn_test_trackers:RecordingTracker
failing = ntn_test_trackers:FailingTracker
failinit = ntn_test_trackers:FailingInit
badsig = ntn_test_trackers:BadSignature
onlymetrics = ntn_test_trackers:OnlyMetrics
factory = ntn_test_trackers:make_tracker
broken = ntn_broken_tracker:Tracker
seedstyle = ntn_seed_style_tracker:MyCustomTracker
noop1 = ntn_test_trackers:Noop
noop2 = ntn_test_trackers:Noop
noop3 = ntn_test_trackers:Noop
wrapper = ntn_test_trackers:WrapperTracker
specname = ntn_test_trackers:SpecnameTracker
first = ntn_test_trackers:FirstTracker
misspelled = ntn_test_trackers:Misspelled
nosuchhook = ntn_test_trackers:NoSuchHook
globalrun = ntn_test_trackers:GlobalRunTracker
runobject = ntn_test_trackers:RunObjectTracker

[ntn.trackers.readers]
globalrun = ntn_test_trackers:read_runs
runobject = ntn_test_trackers:read_runs

[ntn.secrets]
test = ntn_test_trackers:declared_secrets
"""


@pytest.fixture
def test_trackers(tmp_path_factory, monkeypatch):
    """A real distribution `ntn-test-trackers` on sys.path, with trackers declared as entry points."""
    site = tmp_path_factory.mktemp("site")
    (site / "ntn_test_trackers.py").write_text(TRACKERS)
    (site / "ntn_broken_tracker.py").write_text("raise ImportError('libfoo.so: cannot open shared object file')\n")
    seed_style = "from experiments.trackers import BaseTracker\n\n\nclass MyCustomTracker(BaseTracker):\n    pass\n"
    (site / "ntn_seed_style_tracker.py").write_text(seed_style)  # as the seed's "Custom Trackers" writes one
    dist = site / "ntn_test_trackers-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ntn-test-trackers\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TRACKER_BACKEND", raising=False)
    import ntn_test_trackers

    ntn_test_trackers.CALLS.clear()
    yield ntn_test_trackers
    sys.modules.pop("ntn_test_trackers", None)
    sys.modules.pop("ntn_broken_tracker", None)
    sys.modules.pop("ntn_seed_style_tracker", None)
