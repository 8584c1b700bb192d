# Sourced by run.sh and run_sweep.sh: this checkout's experiments on PYTHONPATH, and the Python to run them
# ($PYTHON if set, else python3 from PATH: an activated virtual environment's, for instance), refused in one
# line when it has no ntn installed (its import error was a traceback).
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"
if ! command -v "$python" > /dev/null; then
    echo "$1: PYTHON=$python is not a command; set it to a Python that has ntn installed, e.g. .venv/bin/python" >&2
    exit 2
fi
if ! "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('ntn') is None)" 2>/dev/null; then
    echo "$1: $python ($(command -v "$python")) has no ntn installed: activate the environment that has it" \
        "(source .venv/bin/activate) or set PYTHON=.venv/bin/python" >&2
    exit 2
fi
