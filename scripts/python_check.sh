# Sourced by ci_bench.sh and test.sh: can an interpreter run the suite, and if not, why.
# python_unfit PY PACKAGE...: prints why PY cannot ("not found, or not executable", or "missing a, b")
# and succeeds; fails (prints nothing) when PY runs and finds every package. An interpreter without
# them had failed inside pytest's start-up with a bare ModuleNotFoundError (exit 1, a failure's), and
# one that does not exist with the shell's "No such file or directory" as the list of what it lacked.
python_unfit() {
  local py=$1 missing
  shift
  if ! command -v "$py" > /dev/null 2>&1; then
    echo "not found, or not executable"
    return 0
  fi
  local status=0
  missing=$("$py" -c 'import importlib.util as u, sys; m = [n for n in sys.argv[1:] if u.find_spec(n) is None]; print(", ".join(m)); sys.exit(1 if m else 0)' "$@" 2>&1) || status=$?
  [ "$status" -eq 0 ] && return 1
  if [ -z "$missing" ]; then  # it printed nothing: not a Python that ran the probe
    echo "it ran no Python probe (exit status $status, no output: not a Python interpreter?)"
  else
    echo "missing ${missing}"
  fi
}
