#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh machine: Fashion-MNIST from Debian (where apt is available), a .venv
# with torch at constraints.txt's versions, and forgetkit installed in it. Re-running it is fast and changes nothing.
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
WANT="$(cat pyproject.toml constraints.txt setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch and torchvision first, at this machine's versions (constraints.txt; these wheels lie on its disk), then
  # forgetkit with every extra and the test tools under the same constraints, so nothing replaces that torch.
  .venv/bin/python -m pip install -q -c constraints.txt torch torchvision
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  echo "$WANT" > "$STAMP"
fi
