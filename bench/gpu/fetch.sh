#!/usr/bin/env bash
# What a GPU run carries (`make gpu-wheels`): the wheels of bench/gpu/wheels.txt for the device's Python 3.12 on
# x86-64 in .whl/ (a pure-Python package published only as a source archive is built into a wheel here), and
# .gpukit/: the trained demo model and its test set, for the streaming and bf16 measurements (from `make demo`).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
grep -v '^#' bench/gpu/wheels.txt | grep -v '^$' | while read -r req; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       "${platforms[@]}" -d .whl "$req" 2>/dev/null; then
    "$PY" -m pip wheel -q --no-deps -w .whl "$req"   # pure Python, source only: any Python reads the wheel
  fi
done
du -sh .whl
if [ -f outputs/demo/runs/tiny_cpu/latest/final.nemo ]; then
  rm -rf .gpukit && mkdir -p .gpukit/test
  cp outputs/demo/runs/tiny_cpu/latest/final.nemo .gpukit/demo.nemo
  "$PY" - <<'PYEOF'
from pathlib import Path
from lhotse import CutSet
import shutil
cuts = CutSet.from_file("outputs/demo/data/cuts_test.jsonl.gz").to_eager()
out = Path(".gpukit/test")
for cut in cuts:
    src = Path(cut.recording.sources[0].source)
    shutil.copy(src, out / src.name)
    cut.recording.sources[0].source = src.name
cuts.to_file(out / "cuts_test.jsonl.gz")
PYEOF
  du -sh .gpukit
else
  echo "no demo model (run \`make demo\` first): the GPU run measures the full geometry only" >&2
fi
