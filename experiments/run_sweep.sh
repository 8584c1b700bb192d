#!/usr/bin/env bash
# Train every configuration of a sweep file for each of its seeds, in parallel, one tracked run each:
#   bash experiments/run_sweep.sh experiments/sweeps/bond_sweep.toml [--executor dask] [--workers N] [--scheduler ADDR]
# Run it again to train only what is missing. bash experiments/run_sweep.sh --help
here="$(dirname "$(readlink -f "${BASH_SOURCE:-$0}")")"
. "$here/launch.sh" run_sweep.sh
exec "$python" -m experiments.sweep "$@"
