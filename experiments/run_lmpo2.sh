#!/usr/bin/env bash
# Train LMPO2 for every seed in SEEDS (default 0,1,2,3,4), one tracked run each. Settings come from
# environment variables or flags: bash experiments/run_lmpo2.sh --help
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE:-$0}")")/run.sh" lmpo2 "$@"
