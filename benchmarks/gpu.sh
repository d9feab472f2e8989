#!/usr/bin/env bash
# The GPU checks and figures, as one prepared run on a lent NVIDIA machine: the CUDA tests, CUDA proposals
# against the CPU's on real photos (gpu_check.py), then `fastmask bench --device cuda --folder` on those
# photos with the shipped default (6 scales) at top-100 and top-1000: fp32 and bf16, batch 1 and 8,
# torch.compile on and off; then `propose` under torchrun with two processes on the one GPU. Logs and JSON
# go to $OUT/gpu-logs.tar.gz (default OUT: benchmarks/out); the tables are printed last. On an H200 with
# 40 photos (2026-12-04) the tests and check took 65 s and each bench about 2 minutes: about 11 minutes in
# all, over one 10-minute call; run it in two calls (STEPS=check, STEPS=bench) or with fewer photos.
#
# That machine fetches nothing: its python3 holds torch, onnx, onnxruntime, opencv, typer, rich, pytest,
# but not pycocotools or orjson. Before the run, here (.gpu is ignored by git; carry it):
#   pip download pycocotools orjson --no-deps --only-binary :all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/wheels
#   mkdir -p .gpu/val && cp SOME_PHOTOS/*.jpg .gpu/val/      # real photos to time on
# Then: bash benchmarks/gpu.sh
set -uo pipefail
OUT=${OUT:-benchmarks/out}
LOGS=$OUT/gpu-logs
mkdir -p "$LOGS"
IMAGES=${IMAGES:-.gpu/val}
[ -d "$IMAGES" ] || IMAGES=examples/images
export PYTHONUNBUFFERED=1 FASTMASK_CACHE=/tmp/fastmask-cache
if [ -d .gpu/wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fastmask() { python3 -m fastmask_cli "$@"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$LOGS/machine.txt" 2>&1
# packed after every step: the device tool returns at most 8 files, and a run cut at its limit keeps what it has
step() { echo "== $(date +%T) $*" | tee -a "$LOGS/steps.txt"; tar -czf "$OUT/gpu-logs.tar.gz" -C "$OUT" gpu-logs; }

STEPS=${STEPS:-check,bench}
if [[ $STEPS == *check* ]]; then
step tests
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/inference/test_cuda.py tests/inference/test_backend.py \
  > "$LOGS/tests.txt" 2>&1
step check
timeout 150 python3 benchmarks/gpu_check.py "$IMAGES" --limit 20 --json "$LOGS/check.json" > "$LOGS/check.txt" 2>&1
fi
if [[ $STEPS == *bench* ]]; then
for run in "fp32 1" "fp32 8" "bf16 1" "bf16 8" "bf16 8 --compile"; do
  set -- $run
  name=bench-cuda-$1-batch$2${3:+-compiled}
  step "$name"
  timeout 150 python3 -m fastmask_cli bench --device cuda --precision "$1" --batch-size "$2" ${3:-} --scales 6 \
    --top-k 100,1000 --backend torch --runs 2 --warmup 2 --jobs 1 --images "$IMAGES" --folder --wide \
    --json "$LOGS/$name.json" > "$LOGS/$name.txt" 2>&1
done
step torchrun
for k in 100 1000; do
  start=$(date +%s.%N)
  timeout 120 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m fastmask_cli propose "$IMAGES" \
    --out "$LOGS/torchrun-top$k.json" --device cuda --top-k $k > "$LOGS/torchrun-top$k.txt" 2>&1
  echo "torchrun 2 processes, top-$k: exit $?, $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s wall for $(ls "$IMAGES" | wc -l) images (start-up included)" \
    | tee -a "$LOGS/torchrun.txt"
  rm -f "$LOGS/torchrun-top$k.json"
done
fi
step done
tail -n 3 "$LOGS/tests.txt" "$LOGS/check.txt" 2>/dev/null
for f in "$LOGS"/bench-*.txt; do echo "## $f"; tail -n 14 "$f"; done
cat "$LOGS/torchrun.txt" 2>/dev/null
