#!/usr/bin/env bash
# The planner's choice against the measured best: one workload run with the planner's knobs and with fixed knobs
# around them (benchmarks/results/<date>-<machine>/grid-*.{jsonl,md,json}), ranked by benchmarks/grid_summary.py.
#   512k-a, 512k-b:  Llama-3-8B, 512K, 24 GB: the planner's choice and five fixed (chunk, heads per group, resident
#                    heads; R left out is the most that fits) configurations -> grid-512k-24gb.jsonl
#   128k:            Llama-3-8B, 128K, 24 GB: the planner's choice and six fixed configurations -> grid-128k-24gb.jsonl
#   512k-tail:       the 512K grid as timing probes (one 10-minute call: ~65 s a cell on an H200): the last 32K
#                    prefill tokens of each configuration (tail = 32K / chunk; the planner's cell assumes its 4K
#                    chunks) over the random synthetic past, and decode at the full context -> grid-512k-24gb-tail.jsonl
#   summary:         grid-512k-24gb.{md,json}, grid-128k-24gb.{md,json} and grid-512k-24gb-tail.{md,json} (no GPU
#                    needed; the committed 128K table was predicted again with the final cost model:
#                    benchmarks/repredict.py)
# Take a profile on this machine first (validation.sh MACHINE profile) so that the plans are this machine's.
source "$(dirname "$0")/common.sh"
G512=grid-512k-24gb.jsonl
G128=grid-128k-24gb.jsonl
G512T=grid-512k-24gb-tail.jsonl
case "$PART" in
512k-a)
    cells 250 llama-3-8b:512K:24GB,llama-3-8b:512K:24GB:c=4K:G=1,llama-3-8b:512K:24GB:c=16K:G=1 $G512 ;;
512k-b)
    cells 250 llama-3-8b:512K:24GB:c=8K:G=4,llama-3-8b:512K:24GB:c=8K:G=2,llama-3-8b:512K:24GB:c=8K:G=8:R=0 $G512 ;;
512k-tail)
    cells 100 llama-3-8b:512K:24GB:tail=8,llama-3-8b:512K:24GB:c=8K:G=4:tail=4,llama-3-8b:512K:24GB:c=4K:G=1:tail=8,llama-3-8b:512K:24GB:c=8K:G=2:tail=4,llama-3-8b:512K:24GB:c=16K:G=1:tail=2,llama-3-8b:512K:24GB:c=8K:G=8:R=0:tail=4 $G512T ;;
128k)
    cells 80 llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=16K:G=8:R=0,llama-3-8b:128K:24GB:c=8K:G=8:R=0,llama-3-8b:128K:24GB:c=16K:G=1,llama-3-8b:128K:24GB:c=8K:G=4,llama-3-8b:128K:24GB:c=4K:G=2,llama-3-8b:128K:24GB:c=8K:G=8 $G128 ;;
summary)
    python3 benchmarks/grid_summary.py "$RESULTS/$G512" --choice llama-3-8b:512K:24GB --name grid-512k-24gb --dir "$RESULTS"
    python3 benchmarks/grid_summary.py "$RESULTS/$G128" --choice llama-3-8b:128K:24GB --name grid-128k-24gb --dir "$RESULTS"
    python3 benchmarks/grid_summary.py "$RESULTS/$G512T" --choice llama-3-8b:512K:24GB --name grid-512k-24gb-tail \
        --dir "$RESULTS" ;;
*)
    usage "512k-a, 512k-b, 512k-tail, 128k, summary" ;;
esac
