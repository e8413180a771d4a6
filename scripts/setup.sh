#!/usr/bin/env bash
# Idempotent setup: Debian packages for offscreen MuJoCo rendering, then .venv with the CPU torch
# from local disk first (an unpinned torch would pull a multi-GB CUDA build), then pushcut.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libglx-mesa0 libosmesa6)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1
fi

PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.pushcut-installed
log=.venv/setup.log
run() {  # pip's own output goes to the log; on failure, its tail is shown
  "$@" >>"$log" 2>&1 || { echo "setup: failed: $*"; tail -n 30 "$log"; echo "setup: full log in $log"; exit 1; }
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing torch==2.13.0 (CPU) and pushcut into .venv (2-3 minutes; log in $log)"
  : >"$log"
  run .venv/bin/pip install -q --upgrade pip
  run .venv/bin/pip install -q torch==2.13.0
  run .venv/bin/pip install -q -e ".[dev,libero,cpu]"
  run .venv/bin/python -c "import torch, mujoco, rclpy, onnxruntime, libero.libero; assert torch.__version__.startswith('2.13.0')"
  touch "$stamp"
  echo "setup: done"
fi
