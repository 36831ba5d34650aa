#!/usr/bin/env bash
# The GPU proof: one prepared run on an NVIDIA GPU (an H200), stopped after GPU_RUN_TIMEOUT_S (500 s by default)
# with everything it measured written under $OUT (gpu.json, gpu.md, run.log; outputs/gpu/ when $OUT is unset).
# See bench/gpu/measure.py for what and how.
#
#   bash bench/gpu/run.sh --smoke      # on CPU at toy sizes, before using the GPU machine (a test runs it)
#   make gpu-wheels                    # the wheels the GPU machine lacks (.whl/) and the demo model (.gpukit/)
#   # then copy the tree with .whl/ and .gpukit/ to the GPU machine and run there:
#   #   bash bench/gpu/run.sh
#
# On the GPU machine, python3 is the image's (torch + CUDA); the carried wheels go to /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-outputs/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -d .whl ] && ! "$PY" -c "import nemo" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if command -v nvidia-smi >/dev/null; then nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true; fi
# measure.py keeps each section's results as it finishes; the timeout ends the run with time left to copy them back.
status=0
timeout "${GPU_RUN_TIMEOUT_S:-500}" "$PY" bench/gpu/measure.py --out "$OUT" "$@" 2>&1 | tee "$OUT/run.log" || status=$?
exit "$status"
