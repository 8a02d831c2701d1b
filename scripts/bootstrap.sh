#!/usr/bin/env bash
# Create .venv and install daxfs with everything it needs, Debian packages included.
# Idempotent: installs only what is missing.  Used by `make` (demo, test, bench, lint).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
APT_PACKAGES=(gcc make pkg-config python3-dev python3-venv libpmem2-dev pmdk-tools fio fuse3 libfuse3-dev nbdkit liburing-dev rsync sqlite3 git)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    echo "bootstrap: WARNING: could not install ${missing[*]}; benchmarks against PMDK, the FUSE mount and the NBD tests will be skipped" >&2
  fi
fi

# A Python >= 3.11 to build the venv with.
python=""
for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "bootstrap: daxfs needs Python >= 3.11; none found (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $python"
  "$python" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c 'import daxfs.pmem._native' 2>/dev/null ||
  echo "bootstrap: WARNING: the C extension did not build; devices will persist with msync" >&2
"$VENV/bin/python" -c 'import daxfs.block._uring' 2>/dev/null ||
  echo "bootstrap: WARNING: the io_uring extension did not build (liburing-dev missing?); block devices will use a thread pool" >&2
"$VENV/bin/python" -c 'import daxfs' # fail loudly if the install did not work
