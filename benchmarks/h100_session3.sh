#!/usr/bin/env bash
# The third H100 session's measurements (issues 5 and 7), in parts that each fit one 10-minute command.
# Results go to $OUT; copy them into benchmarks/results/ with the device and date.
#   kernels: where the GPU time goes (benchmarks/kernel_profile.py): the 128K 24 GB prefill (issue 7's cell) and
#            the all-resident 32K 24 GB decode (issue 5's worst decode cells), CUDA kernels and Python's cProfile
#   merge:   after the one-pass merge written into the layer output became the default: the GPU tests of the split
#            and the executor, the 128K 24 GB prefill's kernels again, 128K 24 GB cells (the planner's knobs and
#            16K chunks), and host-bound decode cells with the host time per token now in the report
#   profile: the executor's decode host time against model width (benchmarks/host_width_probe.py), a full profile
#            on the new executor (its step table includes the merge), then the 128K cells on it
#   final1..3: issue 5's matrix on a profile made on the same machine (host time differs between the lent machines:
#            the executor's decode layer measured 0.64 ms in one profile and 1.02 ms in another). final1 profiles
#            (kept in /tmp for final2 and final3, called at once so the machine stays warm; a fresh machine falls back
#            to the committed profile and says so) and runs the short cells; final2 and final3 the long ones and the
#            128K grid of the plan's choice against fixed knobs
#   grid:    the 128K 24 GB cell with the planner's choice and the alternatives it ranked next, knobs fixed
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PROFILE=${PROFILE:-hwprofiles/catalog/h100-sxm-measured.json}
part=${1:?kernels, merge, profile, final1, final2, final3 or grid}
kp() { timeout "$1" python3 benchmarks/kernel_profile.py "${@:2}"; }

case "$part" in
kernels)
    kp 200 --name prefill-128k-24gb -- --hw "$PROFILE" --model llama-3-8b --context 128K --gpu-mem 24GB --new-tokens 2
    kp 120 --name decode-32k-24gb --from-chunk last -- --hw "$PROFILE" --model llama-3-8b --context 32K \
        --gpu-mem 24GB --new-tokens 33
    kp 120 --name decode-32k-24gb-cprofile --from-chunk last --cprofile -- --hw "$PROFILE" --model llama-3-8b \
        --context 32K --gpu-mem 24GB --new-tokens 33
    ;;
merge)
    timeout 200 python3 -m pytest tests/gpu/test_attention_split_gpu.py tests/gpu/test_executor_gpu.py -q -x 2>&1 \
        | tee "$OUT/gpu-tests.log" | tail -3
    kp 150 --name prefill-128k-24gb-merged -- --hw "$PROFILE" --model llama-3-8b --context 128K --gpu-mem 24GB \
        --new-tokens 2
    python3 benchmarks/validate.py run --hw "$PROFILE" --out "$OUT/validation.jsonl" --timeout-s 110 \
        --cells llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=16K:G=8,llama-3-8b:8K:24GB,llama-3-8b:32K:24GB,llama-3-8b:32K:80GB,llama-3-8b:128K:80GB
    ;;
profile)
    timeout 100 python3 -m pytest tests/gpu/test_attention_split_gpu.py -q -x -k warm_up 2>&1 | tail -2
    timeout 120 python3 benchmarks/host_width_probe.py
    timeout 280 python3 -m headplan.cli profile --name h100-sxm-measured --out "$OUT/h100-sxm-measured.json" \
        --force 2>&1 | tee "$OUT/profile.txt" | tail -4
    PROFILE=$OUT/h100-sxm-measured.json
    python3 benchmarks/validate.py run --hw "$PROFILE" --out "$OUT/validation.jsonl" --timeout-s 110 \
        --cells llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=16K:G=8,llama-3-8b:128K:24GB:c=16K:G=4
    ;;
final1)
    timeout 280 python3 -m headplan.cli profile --name h100-sxm-measured --out "$OUT/h100-sxm-measured.json" \
        --force 2>&1 | tee "$OUT/profile.txt" | tail -4
    cp "$OUT/h100-sxm-measured.json" /tmp/hp-profile.json
    python3 benchmarks/validate.py run --hw /tmp/hp-profile.json --out "$OUT/validation.jsonl" --timeout-s 100 \
        --cells llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=16K:G=8,llama-3-8b:8K:24GB,llama-3-8b:32K:24GB,llama-3-8b:32K:80GB,llama-3-8b:128K:80GB,llama-3.2-1b:32K:24GB,llama-3.2-1b:128K:24GB
    ;;
final2|final3)
    hw=/tmp/hp-profile.json
    [ -f "$hw" ] || { echo "fresh machine: no profile from final1 here; using $PROFILE"; hw=$PROFILE; }
    cells=llama-3-8b:256K:24GB,llama-3-8b:256K:80GB,llama-3.2-1b:512K:24GB,llama-3-8b:512K:24GB
    [ "$part" = final3 ] && cells=llama-3-8b:512K:80GB,llama-3.2-1b:1M:80GB,llama-3-8b:128K:24GB:c=8K:G=2,llama-3-8b:128K:24GB:c=16K:G=2
    python3 benchmarks/validate.py run --hw "$hw" --out "$OUT/validation.jsonl" --timeout-s 250 --cells "$cells"
    ;;
grid)
    python3 benchmarks/validate.py run --hw "$PROFILE" --out "$OUT/validation.jsonl" --timeout-s 80 \
        --cells llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=16K:G=8:R=0,llama-3-8b:128K:24GB:c=8K:G=8:R=0,llama-3-8b:128K:24GB:c=16K:G=1,llama-3-8b:128K:24GB:c=8K:G=4,llama-3-8b:128K:24GB:c=4K:G=2,llama-3-8b:128K:24GB:c=8K:G=8
    ;;
esac
