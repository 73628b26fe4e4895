#!/usr/bin/env bash
# GPU checks and benchmarks of ccGAN/pcNet on one CUDA machine, in one script (a lent GPU's time is short).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # from the repository root, python3 with torch+CUDA
#
# 1. tests/test_gpu.py: both trainers under bf16/fp16/fp32 with channels-last, resume, tiled inference
#    against the CPU, profiling, ONNX export (NCCL data parallel when there are two GPUs);
# 2. benchmarks/nets_speed.py --device cuda: generator inference ms per 256x256 image (fp32, bf16, fp16;
#    batches 1-32) and training iterations/s of the paper and quick presets;
# 3. the command line on the GPU: `cellbench fit` (paper preset, simulated pairs), interrupted and
#    resumed with --resume, then `cellbench export --onnx`.
# Everything lands in $OUT. Packages missing on the machine can come as wheels in .whl/ (pure Python:
# colour-science, torchstain), installed into /tmp/site.
set -u -o pipefail
OUT=${OUT:-/tmp/cellbench_gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD"
fi
step() { echo "=== $* ($(date +%T))"; }

step machine
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/machine.txt"
$PY -c "import torch, cellbench; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'cellbench', cellbench.__version__)" | tee -a "$OUT/machine.txt"

step tests
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.txt" | tail -25

step speed
timeout "${SPEED_TIMEOUT:-240}" $PY benchmarks/nets_speed.py --device cuda --amp off,bf16,fp16 \
    --batches 1,2,4,8,16,32 --repeats 20 --presets quick,paper --train-presets paper,quick \
    --train-iterations "${TRAIN_ITERATIONS:-60}" --json "$OUT/nets_speed_cuda.json" 2>&1 | tee "$OUT/nets_speed.txt"

step cli
W=$(mktemp -d)
(
    set -e
    $PY -m cellbench fit ccgan --data synthetic:n=12 --preset paper --iterations 40 --device cuda \
        --set checkpoint_every=20 --set sample_every=20 --set progress=false --out "$W/m"
    $PY -m cellbench fit ccgan --data synthetic:n=12 --preset paper --iterations 60 --device cuda \
        --set checkpoint_every=20 --set sample_every=20 --set progress=false --out "$W/m" --resume
    $PY -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print('log iterations', r[0]['iteration'], '..', r[-1]['iteration'], len(r), 'lines; last', {k: round(v, 3) for k, v in r[-1].items()})" "$W/m/train_log.jsonl"
    $PY -m cellbench export "$W/m" --onnx "$W/g.onnx"
    cp "$W/m/samples/"*.png "$OUT/" 2>/dev/null | true
) 2>&1 | tail -30 | tee "$OUT/cli.txt"
step done
