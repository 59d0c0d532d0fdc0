#!/usr/bin/env bash
# GPU checks, for a machine with a CUDA device and torch, transformers and peft installed
# (CI has no GPU; these never run there). Runs the CUDA tests (`pytest -m gpu`) and the
# training-step speed benchmark on CUDA at two sizes, writing logs and results to OUT_DIR.
#
#   bash scripts/gpu-check.sh MODEL_DIR OUT_DIR
#
# MODEL_DIR: a local MiniLM directory (the offline package's, or a copy of it).
set -uo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: gpu-check.sh MODEL_DIR OUT_DIR}
out=${2:?usage: gpu-check.sh MODEL_DIR OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/versions.txt"
import platform, torch, transformers, peft
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("transformers", transformers.__version__, "peft", peft.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
PY
status=0
python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu-tests.log" || status=1
for size in "16 128" "64 256"; do
  set -- $size
  python3 -m lrlora bench-speed --device cuda --model "$model" --batch-size "$1" --seq-len "$2" \
    --rounds 7 --steps 20 --warmup 5 --infer-steps 20 \
    --results-dir "$out/speed-b$1-s$2" --docs-dir "$out/speed-b$1-s$2" \
    2>&1 | tee "$out/speed-b$1-s$2.log" || status=1
done
exit $status
