# Sourced by run.sh and run_sweep.sh, with $here their folder and $1 the script's name: this checkout's
# experiments on PYTHONPATH, and the Python to run them ($PYTHON if set, else python3 from PATH: an activated
# virtual environment's, for instance), refused in one line when it cannot start or has no ntn installed (the
# import error was a traceback).
export PYTHONPATH="$(cd "$here/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"
if ! command -v "$python" > /dev/null; then
    echo "$1: PYTHON=$python is not a command; set it to a Python that has ntn installed, e.g. .venv/bin/python" >&2
    exit 2
fi
# a package, not a folder named ntn in the working directory (a namespace package, no origin)
said="$("$python" -c "import importlib.util as u, sys; s = u.find_spec('ntn'); sys.exit(3 * (s is None or s.origin is None))" 2>&1)"
case $? in
    0) ;;
    3)
        echo "$1: $python ($(command -v "$python")) has no ntn installed: activate the environment that has it" \
            "(source .venv/bin/activate) or set PYTHON=.venv/bin/python" >&2
        exit 2
        ;;
    *)
        why="$(printf '%s\n' "$said" | grep -m 1 -i 'error')" || why="$(printf '%s\n' "$said" | tail -n 1)"
        echo "$1: $python cannot start: $why" >&2
        exit 2
        ;;
esac
