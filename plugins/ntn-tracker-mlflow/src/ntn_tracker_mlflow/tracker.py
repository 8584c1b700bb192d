"""MlflowTracker: one MLflow run per tracked run (one per seed), through MLflow's own client.

- Where: $MLFLOW_TRACKING_URI (`http://host:5000`, `sqlite:///...`), else MLflow's default (a SQLite
  database `mlflow.db` in the working directory). A local store is created before training
  (`check_environment`) by one process at a time, under the lock file `<database>.lock` beside it, so that
  launches at once never race on its schema; a local directory (MLflow's file store,
  in maintenance mode since MLflow 3) and a URI no MLflow store takes are refused in one line. Credentials: MLflow's own
  variables (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), read by
  MLflow; their values never reach a payload (`secret_values`).
- The MLflow experiment is config["experiment"] (else the run name without its `_seed<N>`); the run is
  named after the tracked run, `{experiment}_seed{seed}`.
- params: the hparams, flattened (`outer.inner`), as MLflow keeps them, text; the exact JSON of config,
  hparams and summary is kept as the artifacts ntn/config.json, ntn/hparams.json, ntn/summary.json.
- metrics: every number of every epoch, at its step, so that MLflow's charts start at epoch 0; the
  initial evaluation (step -1, the untrained model) as params `initial.<name>` instead, which would
  otherwise squash every curve; the summary's figures, taken at the epoch the run kept, as metrics
  `kept/<split>_<name>` (`kept/val_r2`, `kept/test_r2`, `kept/train_loss`: `ntn.tracking.figure_name`) at
  that epoch's step, so that the runs table never shows a last epoch's `val_loss` and a kept epoch's
  figure under one name; its other values (`seed`, `best_epoch`, `success`, `error`) as tags
  `summary/<key>` in plain text. Non-numeric metric values are left out.
- The MLflow experiment is made as a classic ML experiment (`mlflow.experimentKind`), which MLflow 3.17's
  UI ignores: it opens in its GenAI mode unless its page's address says `workflowType=machine_learning`
  (or "Model training" was chosen, top left). Each experiment gets a saved view `ntn` (the experiment tag
  `mlflow.sharedViewState.ntn`, listed under the runs table's "Views"): its swept settings and kept
  held-out figures as columns, best first, run names uncut; `where()` gives its address.
- provenance: MLflow's own source tags (`mlflow.source.git.commit`, `mlflow.source.git.branch`,
  `mlflow.source.name`: the command), which its UI shows as the run's Source, `ntn.git.dirty`, and the
  whole record as the artifact ntn/provenance.json;
- files attached to the run (`log_artifact`) are MLflow artifacts of the run, under their name; but
  `git.diff` and `packages.txt`, alike for every run of a checkout, are stored once per content and
  experiment: by the first run that carries that content (tagged `ntn.stored.<name>` = its SHA-256),
  and every run, that one included, has the tag `ntn.file.<name>` = `runs:/<that run>/<name>` (a holder
  deleted by a rerun keeps its files until `mlflow gc`; the next run with that content stores it again);
- status: FINISHED, FAILED or KILLED (an interrupted run, or one a search pruned: MLflow has no status for
  stopped early, and nothing failed), with the run's end time; MLflow's runs table marks a failed run with
  a red cross. The tag `ntn.status` (finished, failed, interrupted, pruned) holds ntn's own word, to
  filter on: `tags.ntn.status != 'failed'` in the search box.
- A run with config["run_id"] (a sweep's run trained again) replaces the earlier runs tagged with the
  same one: they are deleted when the new one starts.

Every call runs on a thread of its own (`ntn.tracking.Background`): training never waits for
the server. At the end of a run, `finalize` waits at most $NTN_MLFLOW_EXIT_TIMEOUT seconds (default 30)
for the calls still queued. What a server that dies mid-run costs: each run from then on waits that
bound once, at its end, and what it had not sent is lost (MLflow keeps no local copy); the core warns and
lists the failure in `run.failures`, and the seed fails. A server that does not answer before training is
a one-line error. A run whose record misses calls is ended FAILED, never FINISHED. A run left RUNNING (its
process was killed, or its server was gone as it ended) is ended FAILED, with the tags `summary/success`
false and `summary/error`, by the next run of its MLflow experiment started on the same host (each run is
tagged `ntn.host`, `ntn.pid`); a run of another host is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ntn.tracking import Background, TrackerConfigError, experiment_of, figure_name, run_key, seconds, study_of
from ntn.tracking.provenance import DIFF_FILE, PACKAGES_FILE

STORED_ONCE = frozenset({DIFF_FILE, PACKAGES_FILE})  # attached by every run of a process, alike
EXIT_TIMEOUT_ENV = "NTN_MLFLOW_EXIT_TIMEOUT"
DEFAULT_EXIT_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0
SECRET_VARIABLES = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_GATEWAY_API_KEY")
STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "pruned": "KILLED"}
STATUS_TAG = "ntn.status"  # ntn's word for how the run ended, whatever MLflow's status
KEPT = "kept/"  # the summary's figures: at the epoch the run kept
VIEW = "ntn"  # the experiment's saved view, tag `mlflow.sharedViewState.ntn`
VIEW_TAG = f"mlflow.sharedViewState.{VIEW}"
UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
NOT_FIGURES = ("seed", "best_epoch")  # numbers of the summary that are no figure to chart: tags
RUN_KEY_TAG = "ntn.run_key"  # a digest of config["run_id"], safe in a search filter
# the data settings and the sweep's names, as params a researcher searches by (beside the hparams)
SEARCHABLE = ("dataset", "n_samples", "data_seed", "preprocessing", "device", "sweep", "experiment")
MAX_PARAM = 6000  # characters of a param's value that MLflow keeps


def secret_values(environ: Mapping[str, str]) -> Iterable[str]:
    """The `ntn.secrets` declaration: MLflow's credential variables, whatever the core's name rule says."""
    return [environ[name] for name in SECRET_VARIABLES if environ.get(name)]


def uri_from_env() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def exit_timeout() -> float:
    """Seconds a run's end waits for calls still queued: $NTN_MLFLOW_EXIT_TIMEOUT, default 30."""
    return seconds(EXIT_TIMEOUT_ENV, DEFAULT_EXIT_TIMEOUT_S)


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = (value if isinstance(value, str) else json.dumps(value, default=str))[:MAX_PARAM]
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    """A tag's plain text: a string as it is (no JSON quotes), true/false, other values as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


class MlflowRun:
    """The MLflow run of one tracked run; its methods run on the Background thread."""

    def __init__(self, uri: str | None, run_name: str, config: dict[str, Any], started: float) -> None:
        from mlflow import MlflowClient

        # MLflow prints each run's URL on stdout when it ends, which would cut into the experiment's own
        # output from this thread; a user who wants them sets the variable to false
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(tracking_uri=uri)
        record = {"experiment_name": run_name, "config": config}
        experiment_id = self.experiment_id = self._experiment_id(study_of(record))  # a sweep: one experiment
        SEEN.append(experiment_id)
        self.run_name, self.swept = run_name, list(config.get("swept") or {})
        tags = {"ntn.experiment": experiment_of(record)} | (
            {"ntn.sweep": config["sweep"]} if config.get("sweep") else {}
        )
        if config.get("run_id") is not None:
            tags[RUN_KEY_TAG] = run_key(config["run_id"], 32)
            for earlier in self.client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{tags[RUN_KEY_TAG]}'"):
                self.client.delete_run(earlier.info.run_id)
        tags |= {HOST_TAG: _HOST, PID_TAG: str(os.getpid())}
        self._end_abandoned(experiment_id)
        run = self.client.create_run(experiment_id, start_time=int(started * 1000), tags=tags, run_name=run_name)
        self.run_id = run.info.run_id
        self.summary: dict[str, Any] = {}
        self.client.log_dict(self.run_id, config, "ntn/config.json")
        searchable = {k: config[k] for k in SEARCHABLE if config.get(k) is not None} | {
            f"swept.{k}": v for k, v in (config.get("swept") or {}).items()
        }
        if searchable:
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in searchable.items()])

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException:  # another process created it meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def _end_abandoned(self, experiment_id: str) -> None:
        """End as FAILED the runs of the experiment left RUNNING by a process of this host that is gone:
        killed, or its server was unreachable as the run ended. (A run of another host is left as it is.)"""
        if "'" in _HOST:
            return
        query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{_HOST}'"
        for run in self.client.search_runs([experiment_id], query):
            pid = run.data.tags.get(PID_TAG, "")
            if pid.isdigit() and not _alive(int(pid)):
                error = f"its process ({pid} on {_HOST}) ended before the run did; its record is incomplete"
                self.client.set_tag(run.info.run_id, "summary/success", "false")
                self.client.set_tag(run.info.run_id, "summary/error", error)
                self.client.set_terminated(run.info.run_id, status="FAILED")

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        code, command = provenance.get("code", {}), provenance.get("command", {})
        tags = {
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": " ".join(command.get("argv", [])[1:]),
            "mlflow.source.git.commit": code.get("git_commit"),
            "mlflow.source.git.branch": code.get("git_branch"),
            "ntn.git.dirty": code.get("git_dirty"),
        }
        shown = [RunTag(k, _text(v)[:MAX_PARAM]) for k, v in tags.items() if v not in (None, "")]
        self.client.log_batch(self.run_id, tags=shown)
        self.client.log_dict(self.run_id, provenance, "ntn/provenance.json")

    def log_hparams(self, hparams: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in _flat(hparams).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, hparams, "ntn/hparams.json")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric, Param

        if step < 0:  # the untrained model's figures: params, off the charts
            params = [Param(f"initial.{k}", repr(float(v))) for k, v in metrics.items() if _number(v)]
            self.client.log_batch(self.run_id, params=params)
            return
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, int(step)) for key, value in metrics.items() if _number(value)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_summary(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        self.summary.update(summary)
        now = int(time.time() * 1000)
        figures = {k: v for k, v in summary.items() if _number(v) and k not in NOT_FIGURES}
        kept = self.summary.get("best_epoch")
        step = kept if isinstance(kept, int) and not isinstance(kept, bool) and kept >= 0 else 0
        metrics = [Metric(KEPT + figure_name(k, self.summary), float(v), now, step) for k, v in figures.items()]
        tags = [RunTag(f"summary/{k}", _text(v)[:MAX_PARAM]) for k, v in summary.items() if k not in figures]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def log_artifact(self, path: str, name: str) -> None:
        """An artifact of the run (Background's copy of the file is named `name`); a provenance file only
        when no active run of the experiment holds that content, else a tag naming the run that does."""
        if name not in STORED_ONCE:
            self.client.log_artifact(self.run_id, path)
            return
        with open(path, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        holders = self.client.search_runs([self.experiment_id], f"tags.`ntn.stored.{name}` = '{digest}'", max_results=1)
        holder = holders[0].info.run_id if holders else self.run_id
        if not holders:
            self.client.log_artifact(self.run_id, path)
            self.client.set_tag(self.run_id, f"ntn.stored.{name}", digest)
        self.client.set_tag(self.run_id, f"ntn.file.{name}", f"runs:/{holder}/{name}")

    def finalize(self, status: str, end_time: float | None) -> None:
        self.client.log_dict(self.run_id, self.summary, "ntn/summary.json")
        self.client.set_tag(self.run_id, STATUS_TAG, status)
        if status == "finished":
            self._save_view()
        ended = int((end_time or time.time()) * 1000)
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FINISHED"), end_time=ended)

    def _save_view(self) -> None:
        """The experiment's saved view `ntn`, made by its first finished run: the swept settings and the
        kept held-out figures as columns, best first on the validation figure, run names uncut."""
        experiment = self.client.get_experiment(self.experiment_id)
        if VIEW_TAG in experiment.tags:
            return
        state = view_state(self.swept, self.summary, len(self.run_name))
        envelope = {"name": VIEW, "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, json.dumps(envelope))


def view_state(swept: Sequence[str], summary: dict[str, Any], name_length: int) -> dict[str, Any]:
    """A runs table's state as MLflow 3.17's UI saves it in a view (`selectedColumns` and the other keys of
    its `ExperimentPageUIState`, `orderByKey` of its search facets): the params `swept.<name>` and the
    metrics `kept/val_*` and `kept/test_*` of `summary`, best first on the validation r2 or accuracy."""
    ranks = (f"{KEPT}val_r2", f"{KEPT}val_accuracy")  # the figure the table is ordered by, first
    held_out = sorted(
        (KEPT + k for k, v in summary.items() if k.startswith(("val_", "test_")) and _number(v)),
        key=lambda name: (name not in ranks, not name.startswith(KEPT + "val_"), name),
    )
    columns = [f"params.`swept.{k}`" for k in swept] + [f"metrics.`{m}`" for m in held_out]
    order = ["attributes.`Run Name`", "attributes.`Created`", *columns]
    best = next((m for m in held_out if m in ranks), None)
    return {
        "selectedColumns": columns,
        "columnOrder": order,
        "columnWidths": {"attributes.`Run Name`": min(600, 60 + 8 * name_length)} | {c: 140 for c in columns},
        **({"orderByKey": f"metrics.`{best}`", "orderByAsc": False} if best else {}),
    }


def view_address(base: str, experiment_id: str) -> str:
    """Where MLflow's UI at `base` shows an experiment's runs in its classic view, with the saved view `ntn`."""
    query = f"viewStateShareKey={VIEW}&workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


class MlflowTracker(Background):
    """The `mlflow` backend. Tracking URI: `tracking_uri`, else $MLFLOW_TRACKING_URI, else MLflow's default."""

    def __init__(self, experiment_name: str, config: dict[str, Any] | None = None, tracking_uri: str | None = None):
        uri = tracking_uri or uri_from_env()
        started = time.time()  # when training began, not when the thread got to it
        super().__init__(
            lambda: MlflowRun(uri, experiment_name, dict(config or {}), started), timeout=exit_timeout(), name="mlflow"
        )

    @classmethod
    def where(cls) -> str:
        """Where this backend keeps its runs, in a few words (the scripts' closing lines), with the address of
        the last experiment this process recorded, in MLflow's classic view (`view_address`)."""
        uri = uri_from_env()
        served = uri if uri and uri.startswith(("http://", "https://")) else None
        shown = served or "`mlflow ui`"
        if not SEEN:
            return f"mlflow: {uri or 'the default tracking URI'} ({shown}: choose Model training, top left)"
        return f"mlflow: {uri or 'the default tracking URI'} ({shown}, then {view_address(served or UI, SEEN[-1])})"

    @classmethod
    def source(cls) -> str:
        """What `ntn-trackers summary --from` reads this process's runs back from (credentials in the URI are
        redacted by the scripts' line)."""
        return f"mlflow:{uri_from_env()}" if uri_from_env() else "mlflow"

    @classmethod
    def check_environment(cls, run_names: Sequence[str] = ()) -> None:
        """Before any run: a tracking server named by MLFLOW_TRACKING_URI must answer; a local store (a
        SQLite database, MLflow's default) is made ready here, by one process at a time, so that launches
        at once and the processes that then write to it (a sweep's workers) never race on creating its
        schema; a local directory (a file store, which MLflow 3 no longer writes), or a URI that no store
        MLflow knows takes, is refused.

        :raises TrackerConfigError: one line naming the URI and why
        """
        exit_timeout()
        uri = uri_from_env()
        if uri is not None and uri.startswith(("http://", "https://")):
            _probe_server(uri)
        else:  # a local store, or a scheme MLflow or a plugin of it knows (else refused now, not at every run)
            _prepare_local_store(uri)


SEEN: list[str] = []  # the MLflow experiments this process recorded runs in, the last last
HOST_TAG, PID_TAG = "ntn.host", "ntn.pid"  # the process recording a run: a later one ends it if that one is gone
_HOST = platform.node()


def _alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (where that cannot be told: True)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _probe_server(uri: str) -> None:
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).raise_for_status()
    except requests.RequestException as err:
        reason = type(err).__name__ if not isinstance(err, requests.HTTPError) else str(err)
        raise TrackerConfigError(f"MLFLOW_TRACKING_URI={uri!r}: no MLflow server answers there ({reason})") from None


def _prepare_local_store(uri: str | None) -> None:
    """Open the store now: a local SQLite store's schema is created (or migrated) by one process at a time,
    under the lock file `<database>.lock` beside it, so that launches at once never race on it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from ntn.files import release

    shown = f"MLFLOW_TRACKING_URI={uri!r}" if uri else "MLflow's default local store"
    held = _hold_store(uri, shown)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as err:
        if "maintenance mode" in str(err):
            raise TrackerConfigError(
                f"{shown} is a directory (a file store), which this MLflow no longer writes; "
                "use a database, e.g. MLFLOW_TRACKING_URI=sqlite:///mlflow.db, or a server"
            ) from None
        raise TrackerConfigError(f"{shown} cannot be opened ({str(err).splitlines()[0]})") from None
    except Exception as err:  # SQLAlchemy's errors: a path that cannot be created, a damaged database
        raise TrackerConfigError(f"{shown} cannot be opened ({type(err).__name__}: {err})") from None
    finally:
        if held is not None:
            release(*held)


STORE_WAIT_S = 120.0  # how long a launch waits for another that creates the same local store


def _hold_store(uri: str | None, shown: str) -> tuple[str, int] | None:
    """For a SQLite store, its lock file `<database>.lock` held (`ntn.files.hold`, waiting while another
    launch holds it), as the arguments of `ntn.files.release`; None for other stores."""
    from mlflow import get_tracking_uri
    from ntn.files import Held, hold

    resolved = uri or get_tracking_uri()  # MLflow's default: sqlite:///<working directory>/mlflow.db
    if not resolved.startswith("sqlite:///"):
        return None
    lock = resolved.removeprefix("sqlite:///").split("?")[0] + ".lock"
    waited = time.monotonic() + STORE_WAIT_S
    while True:
        try:
            return lock, hold(lock)
        except Held as err:
            if time.monotonic() > waited:
                raise TrackerConfigError(f"{shown}: {err} holds {lock} for over {STORE_WAIT_S:g} s") from None
            time.sleep(0.05)
        except OSError as err:
            raise TrackerConfigError(f"{shown} cannot be opened (its lock file {lock}: {err})") from None
