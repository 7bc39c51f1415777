#!/usr/bin/env bash
# Create the project virtualenv and install Flagpost with its server and dev extras.
set -euo pipefail
venv="${1:-.venv}"
cd "$(dirname "$0")/.."

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    python="$candidate"; break
  fi
done
if [ -z "$python" ]; then
  echo "bootstrap: Python 3.11 or newer is required" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
echo "bootstrap: installing flagpost[server,dev] (editable)"
"$venv/bin/python" -m pip install --quiet -e '.[dev]'
