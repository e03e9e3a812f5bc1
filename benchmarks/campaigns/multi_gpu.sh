#!/usr/bin/env bash
# Several GPUs of one host: the decoder layers split into pipeline stages (headplan run --gpus N)
# -> benchmarks/results/<date>-<machine>/multi-gpu.*, on a machine with 2 GPUs (e.g. MACHINE=h200x2).
#   part1:   machine facts (machine.txt), the two-GPU tests (gpu-tests-multi-gpu.log), a quick profile of this
#            GPU, Llama-3-8B at 256K under 24 GB on 1 GPU and split over 2 (multi-gpu.jsonl), and the longest
#            Llama-3-70B context whose predicted run fits the 10-minute budget (cell-70b.txt)
#   part2:   Llama-3-70B over 2 GPUs at that context, 80 GB per GPU (weights ~66 GiB each) -> multi-gpu-70b.jsonl
#   heads:   by heads (tensor parallel) against by layers against one GPU, 8B at 256K under 24 GB per GPU, last 2
#            chunks of 32K timed (--tail-chunks 2), decode at the full context; the all-reduce measured first
#            -> tensor-parallel.{jsonl,json}, profile-allreduce.json (benchmarks/tensor_parallel.py, ~4 min)
#   summary: multi-gpu.{md,json,png} from both files (no GPU needed)
# HOST_MEM is the host RAM the KV store may use (the lent VM's memory grows as it is used, so it is given);
# PROFILE_NAME names the quick profile. NVLink multicast stays off (it can take the host's GPUs out of service).
source "$(dirname "$0")/common.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
HOST_MEM=${HOST_MEM:-240GiB}
QUICK=$RESULTS/profile-quick.json
case "$PART" in
part1)
    { nvidia-smi --query-gpu=index,name,memory.total,pci.bus_id --format=csv; nvidia-smi topo -m;
      ls /sys/devices/system/node; grep -E 'MemTotal|MemAvailable' /proc/meminfo;
      python3 -c 'import torch, accelerate, transformers; print(torch.__version__, accelerate.__version__,
transformers.__version__, torch.cuda.device_count())'; } 2>&1 | tee "$RESULTS/machine.txt"
    timeout 150 python3 -m pytest tests/gpu/test_multi_gpu.py -q -x 2>&1 | tee "$RESULTS/gpu-tests-multi-gpu.log"
    timeout 120 python3 -m headplan.cli profile --quick --name "${PROFILE_NAME:-$MACHINE-quick}" --out "$QUICK" \
        --force 2>&1 | tail -5
    python3 benchmarks/validate.py run --hw "$QUICK" --cells preset:multi-gpu-8b --new-tokens 16 \
        --out "$RESULTS/multi-gpu.jsonl" --extra "--host-mem $HOST_MEM" --timeout-s 200
    python3 benchmarks/validate.py pick-context --model llama-3-70b --hw "$QUICK" --gpus 2 --gpu-mem 80GB \
        --host-mem "$HOST_MEM" --new-tokens 8 --budget-s 330 | tee "$RESULTS/cell-70b.txt" ;;
part2)
    CELL=${CELL:-$(cat "$RESULTS/cell-70b.txt" 2>/dev/null)}
    python3 benchmarks/validate.py run --hw "$QUICK" --cells "${CELL:?no 70B cell: run part1 first or set CELL}" \
        --new-tokens 8 --out "$RESULTS/multi-gpu-70b.jsonl" --extra "--host-mem $HOST_MEM" --timeout-s 560 ;;
heads)
    python3 benchmarks/tensor_parallel.py --out "$RESULTS" --hw "${HW:-hwprofiles/catalog/h200-sxm-quick.json}" \
        --host-mem "$HOST_MEM" 2>&1 | tee "$RESULTS/tensor-parallel.log" ;;
summary)
    python3 benchmarks/validate.py summarize "$RESULTS"/multi-gpu*.jsonl --name multi-gpu --dir "$RESULTS" ;;
*)
    usage "part1, part2, heads, summary" ;;
esac
