#!/usr/bin/env bash
# A GPU machine checked in minutes (under 10 on one GPU): the tests that need CUDA, the throughput bench at 224 px
# in float32 and bf16 (data path, bare step, GS-LoRA step, whole request, peak memory), with one ViT-B/16 and one
# Face Transformer request on synthetic images at the papers' batch size (48 + 48). It prints the tables to paste
# into docs/scaling.md and leaves them in $OUT (default runs/gpu_check).
#
#     ./setup.sh && bench/gpu_check.sh            # on the GPU machine, from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
"$PY" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU machine")
print(f"gpu_check: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY
echo "== the tests that need CUDA"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt" | tail -3
echo "== throughput: data path, steps and a whole request, float32 and bf16-mixed"
"$PY" bench/throughput.py --device cuda --batch 64 --workers 4 8 --precisions 32 bf16-mixed \
    --models vit_b16:48 face_vit_p8s8:48 --steps 20 --warmup 3 --request-steps 60 --request-eval 96 \
    --request-workers 4 --out "$OUT" | grep -v '^{'
echo "gpu_check: done; paste $OUT/throughput.md into docs/scaling.md (section 'On a GPU')"
