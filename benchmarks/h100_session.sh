#!/usr/bin/env bash
# The second H100 session's measurements (issues 5 and 7), in parts that each fit one 10-minute command.
# Results go to $OUT; copy them into benchmarks/results/ with the device and date.
#   profile: the GPU tests, a full profile (the executor's cudnn-split step now puts 8K+ chunks' causal part on
#            cuDNN, so the committed profile's step table is re-measured), the 128K 24 GB cell (issue 7's target)
#            with the planner's knobs and with c=8K G=2 R=64, and the split variants at 128K
#   cells-80gb: issue 5's full-card cells beyond 128K
#   cells-rerun: the 24 GB cells and the small full-card cells again, on the new profile
#   fused-merge: GPU tests of the split path, the profile again (the step table with the one-pass Triton merge),
#            split variants with the eager and the fused merge, and 128K 24 GB cells on that profile
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PROFILE=${PROFILE:-hwprofiles/catalog/h100-sxm-measured.json}
part=${1:?profile, cells-80gb or cells-rerun}
run_cells() { python3 benchmarks/validate.py run --hw "$PROFILE" --cells "$1" --out "$OUT/validation.jsonl" \
    --timeout-s "${2:-300}"; }

case "$part" in
profile)
    timeout 200 python3 -m pytest tests/gpu -q -x 2>&1 | tee "$OUT/gpu-tests.log" | tail -3
    timeout 260 python3 -m headplan.cli profile --name h100-sxm-measured --out "$OUT/h100-sxm-measured.json" \
        --force 2>&1 | tee "$OUT/profile.txt" | tail -4
    PROFILE=$OUT/h100-sxm-measured.json
    run_cells llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=8K:G=2:R=64 120
    timeout 150 python3 benchmarks/split_variants.py --variants 8K:2:64:auto,8K:6:40:auto,16K:2:64:auto,16K:6:40:auto
    ;;
cells-80gb)
    run_cells llama-3-8b:256K:80GB,llama-3.2-1b:1M:80GB,llama-3-8b:512K:80GB 300
    ;;
cells-rerun)
    run_cells llama-3-8b:8K:24GB,llama-3-8b:32K:24GB,llama-3-8b:32K:80GB,llama-3-8b:128K:80GB,llama-3.2-1b:32K:24GB,llama-3.2-1b:128K:24GB,llama-3.2-1b:512K:24GB,llama-3-8b:256K:24GB,llama-3-8b:512K:24GB 300
    ;;
fused-merge)
    timeout 150 python3 -m pytest tests/gpu/test_attention_split_gpu.py tests/gpu/test_executor_gpu.py -q -x 2>&1 \
        | tee "$OUT/gpu-tests.log" | tail -3
    timeout 150 python3 benchmarks/split_variants.py \
        --variants 8K:2:64:auto:eager,8K:2:64:auto,16K:8:56:auto:eager,16K:8:56:auto,16K:6:40:auto
    timeout 260 python3 -m headplan.cli profile --name h100-sxm-measured --out "$OUT/h100-sxm-measured.json" \
        --force 2>&1 | tee "$OUT/profile.txt" | tail -4
    PROFILE=$OUT/h100-sxm-measured.json
    run_cells llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=16K:G=8,llama-3-8b:128K:24GB:c=16K:G=4 120
    ;;
esac
