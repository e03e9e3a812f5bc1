#!/usr/bin/env bash
# The fourth H100 session's measurements (issue 5), in parts that each fit one 10-minute command, called back to
# back so that one machine (host speed differs between the lent machines) serves as many as it can. Results go to
# $OUT; copy them into benchmarks/results/ with the device and date.
#   final1:  a full profile on this machine (kept in /tmp for the later parts) and issue 5's short cells
#   final2, final3: the long cells on that profile (a fresh machine falls back to the committed profile and says so)
#   grid1, grid2: the 512K / 24 GB grid of chunk size x heads per group x resident heads around the planner's choice
#   again1, again2: after two fixes found by the tail cells (a random model's tied lm_head had been untied: a
#            second 0.49 GiB copy in every 1B cell; tail runs time their chunks after one untimed lead-in chunk),
#            the 1B cells again, the tail cells and the rest of the 512K grid, on a fresh machine (catalog profile)
#   tail:    Llama-3.2-1B at 2M tokens, the last 6 prefill chunks over a zero-filled past (headplan run
#            --tail-chunks: the whole prefill takes ~11 minutes, over the 10-minute cell limit)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PROFILE=${PROFILE:-hwprofiles/catalog/h100-sxm-measured.json}
part=${1:?final1, final2, final3, grid1, grid2, tail, again1 or again2}
hw=/tmp/hp-profile.json
if [ "$part" != final1 ] && [ ! -f "$hw" ]; then
    echo "fresh machine: no profile from final1 here; using $PROFILE"; hw=$PROFILE
fi
cells() { python3 benchmarks/validate.py run --hw "$hw" --out "$OUT/validation.jsonl" --timeout-s "$1" --cells "$2"; }

case "$part" in
final1)
    timeout 280 python3 -m headplan.cli profile --name h100-sxm-measured --out "$OUT/h100-sxm-measured.json" \
        --force 2>&1 | tee "$OUT/profile.txt" | tail -4
    cp "$OUT/h100-sxm-measured.json" "$hw"
    cells 100 llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=16K:G=8,llama-3-8b:8K:24GB,llama-3-8b:32K:24GB,llama-3-8b:32K:80GB,llama-3-8b:128K:80GB,llama-3.2-1b:32K:24GB,llama-3.2-1b:128K:24GB
    ;;
final2)
    cells 250 llama-3-8b:256K:24GB,llama-3-8b:256K:80GB,llama-3.2-1b:512K:24GB,llama-3-8b:512K:24GB
    ;;
final3)
    cells 250 llama-3-8b:512K:80GB,llama-3.2-1b:1M:80GB,llama-3-8b:128K:24GB:c=8K:G=2,llama-3-8b:128K:24GB:c=16K:G=2
    ;;
grid1)
    cells 250 llama-3-8b:512K:24GB:c=4K:G=1:R=21,llama-3-8b:512K:24GB:c=16K:G=1:R=15,llama-3-8b:512K:24GB:c=8K:G=4:R=13
    ;;
grid2)
    cells 250 llama-3-8b:512K:24GB:c=8K:G=2:R=17,llama-3-8b:512K:24GB:c=8K:G=8:R=0
    ;;
tail)
    cells 250 llama-3.2-1b:2M:80GB:tail=6,llama-3.2-1b:2M:24GB:tail=6
    ;;
again1)
    timeout 150 python3 -m pytest tests/gpu/test_executor_gpu.py tests/gpu/test_multi_gpu.py -q -x -k "tail or graph or tied or random" 2>&1 \
        | tee "$OUT/gpu-tests.log" | tail -3
    cells 250 llama-3.2-1b:2M:80GB:tail=6,llama-3.2-1b:2M:24GB:tail=6,llama-3.2-1b:32K:24GB,llama-3.2-1b:128K:24GB,llama-3.2-1b:512K:24GB,llama-3-8b:512K:24GB:c=8K:G=8:R=0
    ;;
again2)
    cells 250 llama-3.2-1b:1M:80GB,llama-3-8b:512K:24GB:c=8K:G=2
    ;;
esac
