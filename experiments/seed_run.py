"""One seed trained in its tracked run `{EXPERIMENT_NAME}_seed{seed}`: the model built from the settings,
its training and held-out figures, whether it counts as a success, what its run records (config,
provenance), and its entry of the results file. A worker trains (`run_seed`, `experiments.workers`); the
driver opens, records and ends the run (`experiments.runner`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import ntn  # its models and trainer import torch on first use
import numpy as np
from ntn.tracking import start_run, uninterrupted
from ntn.tracking.provenance import Provenance, command, gather

from experiments.outputs import redact
from experiments.settings import SETTINGS, Settings, run_name

CODE = Path(__file__).resolve().parent  # the experiments' code: its git state is each run's provenance
REPRODUCE_WITH = "experiments.train"  # the module whose `prepare_reproduction` re-trains a recorded run


def run_config(model: str, s: Settings, data, backends: list, left_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config of every run of an experiment: its settings, the grouping key `experiment`, the data set.
    A tracker plugin's own setting (TRACKER_DIR, AIM_REPO) is there only when that backend tracks the run;
    `left_out`: settings that mean nothing for these runs (a sweep's runs write no OUTPUT_FILE)."""
    tracking = {b.name for b in backends}
    unused = {x.dest for x in SETTINGS if x.backend is not None and x.backend not in tracking} | set(left_out)
    settings = {k: v for k, v in dataclasses.asdict(s).items() if k not in unused}
    return {"model": model.upper(), "experiment": s.experiment_name, **settings, "dataset_info": data.info}


def command_of_this_process() -> dict[str, Any]:
    """The command part of the runs' provenance: the command line, and the settings given as variables."""
    given = {x.env: os.environ[x.env] for x in SETTINGS if os.environ.get(x.env)}
    return command() | {"settings_from_environment": given}


def provenance_of(s: Settings, data, command: dict[str, Any], machine: dict[str, Any] | None = None) -> Provenance:
    """What makes a run: this checkout's code (gathered once per process), `command`, the data, and the
    machine that trained it (`machine`: a worker's `trained_on`, default this process's); `ntn-trackers
    reproduce` re-trains the run with `experiments.train.prepare_reproduction`."""
    gathered = gather(CODE)
    code = gathered.record["code"]
    if code.get("ntn_differs_in"):
        _say_stale_core(code["ntn_imported_from"], tuple(code["ntn_differs_in"]))
    return gathered.merged(
        command=command | {"reproduce_with": REPRODUCE_WITH},
        machine=machine or trained_on(s.device, gathered.record["machine"]),
        data=data.provenance,
    )


@functools.cache  # once per process
def _say_stale_core(imported: str, differs_in: tuple[str, ...]) -> None:
    more = f" and {len(differs_in) - 1} more" if len(differs_in) > 1 else ""
    checkout = CODE.parent
    install = (
        f"pip install -c {shlex.quote(str(checkout / 'constraints.txt'))} -e {shlex.quote(str(checkout / 'core'))}"
    )
    print(
        redact(
            f"warning: ntn is imported from {imported}, a copy that differs from this checkout's core/ in "
            f"{differs_in[0]}{more}: the runs train without those changes (their provenance says so, as "
            f"ntn_differs_in); to train with them, install the checkout's: {install}"
        ),
        file=sys.stderr,
    )


def trained_on(device: str, machine: dict[str, Any]) -> dict[str, Any]:
    """`machine` (`ntn.tracking.provenance.machine()`) with the device a run trains on and its name."""
    if device.startswith("cuda"):
        import torch

        return machine | {"device": device, "device_name": torch.cuda.get_device_name(torch.device(device))}
    return machine | {"device": device, "device_name": machine["cpu"]}


def build_model(model: str, s: Settings, phys_dim: int, output_dim: int, seed: int):
    common = dict(
        L=s.l,
        bond_dim=s.bond_dim,
        phys_dim=phys_dim,
        output_dim=output_dim,
        output_site=s.output_site,
        init_strength=s.init_strength,
        seed=seed,
    )
    if model == "lmpo2":
        return ntn.LMPO2(**common, reduction_factor=s.reduction_factor)
    return {"mpo2": ntn.MPO2, "mmpo2": ntn.MMPO2}[model](**common)


def run_seed(model: str, s: Settings, data, seed: int, run) -> dict[str, Any]:
    """Train one seed, telling `run` (its TrackedRun, or a worker's `Relay` for it) what to record; returns
    the run's summary (which the caller logs)."""
    quality = data.quality
    loss = "mse" if data.task == "regression" else "cross_entropy"
    net = build_model(model, s, data.X_train.shape[1] + 1, data.n_outputs, seed)
    run.log_hparams(
        {k: getattr(s, k) for k in ("l", "bond_dim", "output_site", "init_strength", "batch_size", "n_epochs")}
        | {k: getattr(s, k) for k in ("jitter_start", "jitter_decay", "jitter_min", "select")}
        | ({"reduction_factor": s.reduction_factor} if model == "lmpo2" else {})
        | {"model": model.upper(), "seed": seed, "n_parameters": net.n_parameters, "loss_function": loss}
    )
    trainer = ntn.NTN(
        net,
        data.X_train,
        data.y_train,
        loss=loss,
        batch_size=s.batch_size,
        X_val=data.X_val,
        y_val=data.y_val,
        device=s.device,
    )

    result = trainer.fit(
        s.n_epochs,
        jitter_start=s.jitter_start,
        jitter_decay=s.jitter_decay,
        jitter_min=s.jitter_min,
        select=s.select,
        callback_init=run.callback_init,
        callback_epoch=run.callback_epoch,
    )
    final = result["scores"]
    test = trainer.evaluate(data.X_test, data.y_test)
    if s.save_model:
        _attach_model(run, net, seed)
    failure = _failure(model, s, data, final, test)
    return {
        "seed": seed,
        "loss": final["loss"],
        quality: final[quality],
        "val_loss": final["val_loss"],
        f"val_{quality}": final[f"val_{quality}"],
        "test_loss": test["loss"],
        f"test_{quality}": test[quality],
        "best_epoch": result["best_epoch"],
        "success": failure is None,
    } | ({"error": failure} if failure else {})


def results_entry(summary: dict[str, Any], quality: str) -> dict[str, Any]:
    """A seed's entry of the results file, from its run's summary: the held-out figures first."""
    renamed = {"loss": "train_loss", quality: f"train_{quality}"}
    first = ("seed", "test_loss", f"test_{quality}", "success", "error")
    return {k: summary[k] for k in first if k in summary} | {
        renamed.get(k, k): v for k, v in summary.items() if k not in first
    }


COLLAPSE_R2 = 0.05  # a regression model whose training R² stays below this predicts (almost) a constant


def _failure(model: str, s: Settings, data, final: dict[str, float], test: dict[str, float]) -> str | None:
    """Why a trained seed does not count as a success, in one line; None when it does.

    A seed fails when its held-out figure is no better than the trivial predictor (the training mean, or
    the training majority class); when its training figure is no better either, the model collapsed to
    a constant, which the ridge JITTER_START causes when it is too strong for the model."""
    if data.task == "regression":
        trivial, collapsed = test["r2"] <= 0, final["r2"] < COLLAPSE_R2
        shown = f"test r2 {test['r2']:.3f}, train r2 {final['r2']:.3f}"
    else:
        majority = np.bincount(data.y_train).argmax()
        majority_share, test_share = float(np.mean(data.y_train == majority)), float(np.mean(data.y_test == majority))
        trivial, collapsed = test["accuracy"] <= test_share, final["accuracy"] <= majority_share
        shown = f"test accuracy {test['accuracy']:.3f}, train accuracy {final['accuracy']:.3f}"
    if collapsed:
        return (
            f"collapsed: {model.upper()} predicts (almost) a constant ({shown}); "
            f"the ridge JITTER_START={s.jitter_start:g} may be too strong for it"
        )
    if trivial:
        return f"no better than the trivial predictor on the held-out test split ({shown})"
    return None


@dataclasses.dataclass
class SeedRun:
    """A seed's tracked run, started: closing `stack` ends it, then `until_end`, where `end_seed_run` holds
    signals back from the results entry to the run's end."""

    run: Any
    stack: contextlib.ExitStack
    until_end: contextlib.ExitStack


def open_seed_run(s: Settings, seed: int, backends: list, config: dict[str, Any], provenance: Provenance) -> SeedRun:
    with contextlib.ExitStack() as opening:  # a run that fails to start leaves nothing open
        until_end = opening.enter_context(contextlib.ExitStack())
        run = opening.enter_context(start_run(run_name(s, seed), config, backends, provenance))
        return SeedRun(run, opening.pop_all(), until_end)


def trained_seed(model: str, s: Settings, data, seed: int, run) -> dict[str, Any]:
    """`run_seed`'s summary, or a failed one with its error when training raised (a singular system,
    non-finite values)."""
    try:
        return run_seed(model, s, data, seed, run)
    except (ArithmeticError, RuntimeError, ValueError) as err:
        return {"seed": seed, "success": False, "error": f"{type(err).__name__}: {err}"}


def end_seed_run(seed_run: SeedRun, summary: dict[str, Any], quality: str, on_entry) -> dict:
    """Log the seed's summary (failed when a tracker lost records), make its results entry, hand it to
    `on_entry` (which may return a file to attach to the run) and end the run; the entry, whose `status` is
    the run's: "finished", "failed", or "pruned" (a summary of a run stopped early: `pruned_summary`). A
    tracker that fails from then on (attaching that file, its `finalize`) makes the entry failed too, and
    `on_entry` is called again with it. From the entry until `seed_run.stack` is closed a signal waits."""
    run = seed_run.run
    pruned = "pruned_at_epoch" in summary
    summary, before = _with_lost_records(summary, run.failures), len(run.failures)
    run.log_summary(summary)  # the run's one summary
    if "test_loss" in summary:
        entry = results_entry(summary, quality)
    else:
        entry = failed_entry(summary["seed"], quality, summary.get("error"))
        entry |= {"pruned_at_epoch": summary["pruned_at_epoch"]} if pruned else {}
    entry = _with_status(_with_lost_records(entry, run.failures[before:]), pruned)  # a tracker failed in log_summary
    seed_run.until_end.enter_context(uninterrupted())
    counted = len(run.failures)
    attached = on_entry(entry) if on_entry is not None else None
    if attached is not None:
        run.log_artifact(attached)
    run.finalize("pruned" if pruned else "failed" if summary["success"] is False else "finished")  # or it fails
    if len(run.failures) > counted:
        entry = _with_status(_with_lost_records(entry, run.failures[counted:]), pruned)
        if on_entry is not None:
            on_entry(entry)
    return entry


def pruned_summary(seed: int, epoch: int) -> dict[str, Any]:
    """The summary of a run the study stopped after `epoch` (pruned): no test figures."""
    return {"seed": seed, "success": False, "pruned_at_epoch": epoch}


def _with_status(entry: dict[str, Any], pruned: bool) -> dict[str, Any]:
    return entry | {"status": "pruned" if pruned else "finished" if entry["success"] else "failed"}


LOST = "tracker "  # how the error of a seed whose only failure is a tracker's incomplete record begins


def _with_lost_records(record: dict[str, Any], failures: list[dict[str, str]]) -> dict[str, Any]:
    """`record` (a summary, a results entry) marked failed when a tracker could not complete its record of
    the run (the training itself may have succeeded), with each tracker's failure in `error` and the
    trackers named in `records_incomplete_in`."""
    lost = "; ".join(f"{LOST}{f['tracker']!r} failed in {f['hook']}: {f['error']}" for f in failures)
    if not lost:
        return record
    trackers = list(dict.fromkeys([*record.get("records_incomplete_in", []), *(f["tracker"] for f in failures)]))
    return record | {
        "success": False,
        "error": f"{record['error']}; {lost}" if record.get("error") else lost,
        "records_incomplete_in": trackers,
    }


def trained_but_incomplete(entry: dict[str, Any]) -> bool:
    """Whether a seed trained well and failed only because a tracker could not complete its record."""
    return not entry["success"] and str(entry.get("error")).startswith(LOST)


def failed_entry(seed: int, quality: str, error: str | None) -> dict[str, Any]:
    """The results entry of a seed whose training raised (or that was pruned): no figures, its error."""
    entry = {"seed": seed, "test_loss": None, f"test_{quality}": None, "success": False}
    return entry | ({"error": error} if error is not None else {})


def _attach_model(run, net, seed: int) -> None:
    """The trained model as the run's file `model_seed{seed}.pt` (ntn.load_model reads it back)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"model_seed{seed}.pt"
        ntn.save_model(net, path)
        run.log_artifact(path)
