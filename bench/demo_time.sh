#!/usr/bin/env bash
# Wall time of the demo (the README's first command after set-up), on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./setup.sh
echo "machine: $(nproc) cores, $(uname -m)"
/usr/bin/time -f "demo wall time: %e s, peak RSS %M KB" .venv/bin/forgetkit demo -q
