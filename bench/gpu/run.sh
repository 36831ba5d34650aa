#!/usr/bin/env bash
# The GPU proof: one prepared run, <= 8 minutes on the lent H200, everything it measures written under $OUT
# (gpu.json, gpu.md, run.log; outputs/gpu/ when $OUT is unset). See bench/gpu/measure.py for what and how.
#
#   bash bench/gpu/run.sh --smoke      # here, on CPU at toy sizes, before spending device minutes (a test runs it)
#   make gpu-wheels                    # here: the wheels the device lacks (.whl/) and the demo model (.gpukit/)
#   # then, in a session whose `status` shows a device, the `device` tool's run with carry [".whl", ".gpukit"]:
#   #   command: bash bench/gpu/run.sh        timeout_s: 560
#
# On the device, python3 is the image's (torch + CUDA); the carried wheels go to /tmp/site.
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
# measure.py keeps each section's results as it finishes; the timeout leaves the device tool time to send them.
status=0
timeout "${GPU_RUN_TIMEOUT_S:-500}" "$PY" bench/gpu/measure.py --out "$OUT" "$@" 2>&1 | tee "$OUT/run.log" || status=$?
exit "$status"
