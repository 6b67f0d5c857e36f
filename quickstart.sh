#!/usr/bin/env bash
# The two commands of the README, on a fresh machine (Debian with python3 and pip):
#
#   bash quickstart.sh study [flags]    set up, then run the main job: python studies/width_sweep.py [flags]
#   bash quickstart.sh test [pytest args] set up (Debian packages the tests use included), then the whole suite
#
# Set-up is a virtual environment in .venv with eeray installed editable ("pip install -e .[test]"), redone only
# when pyproject.toml changes. Debian packages are installed where this can (root, or sudo without a password);
# otherwise it stops at once and prints the exact command to run. .ci/run runs `bash quickstart.sh test`.
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-}
[ $# -gt 0 ] && shift
case "$what" in study|test) ;; *) echo "usage: bash quickstart.sh study [flags] | test [pytest args]" >&2; exit 2;; esac

# --------------------------------------------------------------------------- Debian packages
as_root() {  # run a command as root, or print it and stop
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else echo "quickstart: needs Debian packages; run this, then this command again:" >&2
       echo "    sudo $*" >&2; exit 1
  fi
}
debian_packages() {  # install the named Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "quickstart: not a Debian system; install the equivalents of: ${missing[*]}" >&2; exit 1
  fi
  echo "+ apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --------------------------------------------------------------------------- Python
py=$(command -v python3 || true)
[ -n "$py" ] || { echo "quickstart: python3 is needed (3.10 or newer)" >&2; exit 1; }
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "quickstart: python3 is $("$py" --version 2>&1); eeray needs 3.10 or newer" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  if ! "$py" -m venv --help >/dev/null 2>&1 || ! "$py" -c 'import ensurepip' 2>/dev/null; then
    debian_packages "python3-venv"
  fi
  echo "+ $py -m venv .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.eeray-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "+ pip install -e \".[test]\"   (torch is large: a few minutes the first time)"
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import eeray, ray, mlflow, optuna, torch" || { echo "quickstart: the install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export RAY_USAGE_STATS_ENABLED=0

if [ "$what" = study ]; then
  echo "+ .venv/bin/python studies/width_sweep.py $*"
  exec .venv/bin/python studies/width_sweep.py "$@"
fi
# headless Chromium (report and MLflow-UI checks), real Fashion-MNIST (a loader test reads a real subset) and
# iproute2 (the multi-node cluster tests put each Ray node in a network namespace of its own: they need root)
debian_packages chromium dataset-fashion-mnist iproute2
echo "+ .venv/bin/python -m pytest $*"
exec .venv/bin/python -m pytest "$@"
