#!/usr/bin/env bash
# Train every configuration of a sweep file for each of its seeds, in parallel, one tracked run each:
#   bash experiments/run_sweep.sh experiments/sweeps/bond_sweep.toml [--executor dask] [--workers N] [--scheduler ADDR]
# Run it again to train only what is missing. bash experiments/run_sweep.sh --help
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m experiments.sweep "$@"
