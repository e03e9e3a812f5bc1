#!/usr/bin/env bash
# Issue 6's measurements on a machine with 2 H200 GPUs (the lent kind nvidia-h200-x2), in two parts that each
# fit one 10-minute command. Results go to $OUT (copy them into benchmarks/results/ with the date).
#   part1: machine facts, the multi-GPU GPU tests, a quick profile of this GPU, then Llama-3-8B-shaped at 256K
#          under --gpu-mem 24GB on 1 GPU and on 2 GPUs; and the 70B context that fits the 10-minute budget
#   part2: Llama-3-70B-shaped over 2 GPUs at that context under --gpu-mem 80GB per GPU (weights ~66 GiB each)
# NVLink multicast stays off (it can take the host's GPUs out of service).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PROFILE=${PROFILE:-$OUT/h200-quick.json}
HOST_MEM=${HOST_MEM:-240GiB}
part=${1:?part1 or part2}

if [ "$part" = part1 ]; then
    { nvidia-smi --query-gpu=index,name,memory.total,pci.bus_id --format=csv; nvidia-smi topo -m;
      ls /sys/devices/system/node; grep -E 'MemTotal|MemAvailable' /proc/meminfo;
      python3 -c 'import torch, accelerate, transformers; print(torch.__version__, accelerate.__version__,
transformers.__version__, torch.cuda.device_count())'; } 2>&1 | tee "$OUT/machine.txt"
    timeout 150 python3 -m pytest tests/gpu/test_multi_gpu.py -q -x 2>&1 | tee "$OUT/gpu-tests.log"
    timeout 120 python3 -m headplan.cli profile --quick --name h200-sxm-quick --out "$PROFILE" --force 2>&1 | tail -5
    python3 benchmarks/validate.py run --hw "$PROFILE" --cells preset:issue6-8b --new-tokens 16 \
        --out "$OUT/multi-gpu.jsonl" --extra "--host-mem $HOST_MEM" --timeout-s 200
    python3 benchmarks/validate.py pick-context --model llama-3-70b --hw "$PROFILE" --gpus 2 --gpu-mem 80GB \
        --host-mem "$HOST_MEM" --new-tokens 8 --budget-s 330 | tee "$OUT/cell-70b.txt"
elif [ "$part" = part2 ]; then
    CELL=${CELL:-$(cat "$OUT/cell-70b.txt" 2>/dev/null)}
    python3 benchmarks/validate.py run --hw "$PROFILE" --cells "${CELL:?no 70B cell}" --new-tokens 8 \
        --out "$OUT/multi-gpu-70b.jsonl" --extra "--host-mem $HOST_MEM" --timeout-s 560
fi
