#!/usr/bin/env bash
# Shared launcher of run_mpo2.sh, run_lmpo2.sh, run_mmpo2.sh: works from any working directory.
# Uses $PYTHON if set, else python3 from PATH (an activated virtual environment's, for instance).
here="$(dirname "$(readlink -f "${BASH_SOURCE:-$0}")")"
. "$here/launch.sh" "run_$1.sh"
exec "$python" -m experiments.train "$@"
