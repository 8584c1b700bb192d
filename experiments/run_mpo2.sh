#!/usr/bin/env bash
# Train MPO2 for every seed in SEEDS (default 0,1,2,3,4), one tracked run each. Settings come from
# environment variables or flags: bash experiments/run_mpo2.sh --help
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE:-$0}")")/run.sh" mpo2 "$@"
