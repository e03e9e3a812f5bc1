#!/usr/bin/env bash
# Prediction against measurement: the validation matrix (benchmarks/results/<date>-<machine>/validation.*).
# Plans, runs and compares cell by cell (benchmarks/validate.py), each cell in its own process. Run the parts
# back to back so that one machine serves as many as it can; `profile` first (the plans are made from it).
#   gpu-tests:  the GPU test suite -> gpu-tests.log
#   profile:    a full profile of this machine (profile.json, profile-full.txt), then the short cells: Llama-3-8B at
#               8K-128K under 24 GB and the whole card, 128K / 24 GB with knobs fixed (c=16K G=8), Llama-3.2-1B at
#               32K and 128K under 24 GB
#   long:       8B at 256K (24 GB, whole card) and 512K (24 GB), 1B at 512K (24 GB)
#   longest:    8B at 512K on the whole card, 1B at 1M on the whole card, 128K / 24 GB with c=8K G=2 and c=16K G=2
#   tail:       1B at 2M: timing probes of the last 6 prefill chunks (headplan run --tail-chunks 6; the whole
#               prefill is over the 10-minute cell limit)
#   summary:    validation.md, validation.json and validation.png from validation.jsonl (no GPU needed)
#   profile-only: the full profile alone (profile.json, profile-full.txt; about 4-5 min on an H100 or H200), to
#               commit as hwprofiles/catalog/<machine>-measured.json (PROFILE_NAME, e.g. h200-sxm-measured)
#   reduced:    a short matrix (~5 min): 8B at 32K and 128K under 24 GB and the whole card, 1B at 128K under 24 GB,
#               timing probes (last chunks only) of 1B at 512K and 1M and 8B at 512K under 24 GB; plans from
#               this machine's profile if taken in this lease, else $PROFILE (set it to the committed profile)
#   h200-short: one 10-minute call on an H200 (WHOLE_CARD=140GB): 8B at 8K, 32K, 128K under 24 GB and the whole card,
#               128K / 24 GB with c=16K G=8, flash prefill at 32K and 128K, 1B at 32K and 128K (24 GB), 128K (card)
#   h200-long:  one 10-minute call: 8B at 256K (24 GB, card), timing probes of 8B at 512K (last 4 chunks; 24 GB, card)
#               and 1B at 1M (last 6; 24 GB, card), 1B at 512K (24 GB) whole
#   choices:    the CPU-share GPU tests (the share re-balanced on CUDA among them), then whole runs of the planner's
#               choices at 8B 128K, 1B 1M and 8B 512K under 24 GB -> validation-choices.jsonl (~9 min on an H200;
#               PROFILE=hwprofiles/catalog/h200-sxm-measured.json there)
#   rebalance:  8B at 128K (whole) and 512K (last 8 chunks) under 24 GB with --rebalance-cpu-share
#               -> validation-rebalance.jsonl
#   rebalance-ab: 8B at 128K under 24 GB three times each way, alternating: the planner's F kept, and
#               --rebalance-cpu-share -> validation-rebalance-ab-{kept,rebalanced}-N.jsonl (~6 min; ROUNDS picks the rounds): the process-to-
#               process spread of the CPU share's kernel, and what choosing F again does about it
#   share-ab:   8B at 128K under 24 GB, the planner's F and F = 0, alternating (ROUNDS, default 1 2 3; ~5 min)
#               -> validation-share-ab-{planned,streamed}-N.jsonl
# WHOLE_CARD is the whole GPU's memory (default 80GB, the H100); PROFILE_NAME names the profile taken here.
source "$(dirname "$0")/common.sh"
WHOLE=${WHOLE_CARD:-80GB}
case "$PART" in
gpu-tests)
    timeout 500 python3 -m pytest tests/gpu -q -x 2>&1 | tee "$RESULTS/gpu-tests.log" | tail -3 ;;
profile)
    full_profile "${PROFILE_NAME:-$MACHINE-measured}"
    cells 100 llama-3-8b:128K:24GB,llama-3-8b:128K:24GB:c=16K:G=8,llama-3-8b:8K:24GB,llama-3-8b:32K:24GB,llama-3-8b:32K:$WHOLE,llama-3-8b:128K:$WHOLE,llama-3.2-1b:32K:24GB,llama-3.2-1b:128K:24GB ;;
long)
    cells 250 llama-3-8b:256K:24GB,llama-3-8b:256K:$WHOLE,llama-3.2-1b:512K:24GB,llama-3-8b:512K:24GB ;;
longest)
    cells 250 llama-3-8b:512K:$WHOLE,llama-3.2-1b:1M:$WHOLE,llama-3-8b:128K:24GB:c=8K:G=2,llama-3-8b:128K:24GB:c=16K:G=2 ;;
tail)
    cells 250 "llama-3.2-1b:2M:$WHOLE:tail=6,llama-3.2-1b:2M:24GB:tail=6" ;;
profile-only)
    full_profile "${PROFILE_NAME:-$MACHINE-measured}" ;;
reduced)
    cells 200 "llama-3-8b:32K:24GB,llama-3-8b:32K:$WHOLE,llama-3-8b:128K:24GB,llama-3-8b:128K:$WHOLE,llama-3.2-1b:128K:24GB,llama-3.2-1b:512K:24GB:tail=4,llama-3.2-1b:1M:24GB:tail=6,llama-3-8b:512K:24GB:tail=4" ;;
h200-short)
    cells 100 llama-3-8b:8K:24GB,llama-3-8b:32K:24GB,llama-3-8b:32K:$WHOLE,llama-3-8b:128K:24GB,llama-3-8b:128K:$WHOLE,llama-3-8b:128K:24GB:c=16K:G=8,llama-3-8b:32K:24GB:b=flash,llama-3-8b:128K:24GB:b=flash,llama-3.2-1b:32K:24GB,llama-3.2-1b:128K:24GB,llama-3.2-1b:128K:$WHOLE ;;
h200-long)
    cells 150 llama-3-8b:256K:24GB,llama-3-8b:256K:$WHOLE,llama-3-8b:512K:24GB:tail=4,llama-3-8b:512K:$WHOLE:tail=4,llama-3.2-1b:512K:24GB,llama-3.2-1b:1M:24GB:tail=6,llama-3.2-1b:1M:$WHOLE:tail=6 ;;
choices)
    timeout 150 python3 -m pytest tests/gpu/test_cpu_share_gpu.py -q 2>&1 | tee "$RESULTS/gpu-tests-cpu-share.log" | tail -2
    cells 230 llama-3-8b:128K:24GB,llama-3.2-1b:1M:24GB,llama-3-8b:512K:24GB validation-choices.jsonl ;;
rebalance)
    EXTRA=--rebalance-cpu-share cells 120 llama-3-8b:128K:24GB,llama-3-8b:512K:24GB:tail=8 validation-rebalance.jsonl ;;
rebalance-ab)
    # one file per round: validate.py skips a cell its output file already holds
    for round in ${ROUNDS:-1 2 3}; do
        cells 100 llama-3-8b:128K:24GB "validation-rebalance-ab-kept-$round.jsonl"
        EXTRA=--rebalance-cpu-share cells 100 llama-3-8b:128K:24GB "validation-rebalance-ab-rebalanced-$round.jsonl"
    done ;;
share-ab)
    # the planner's F against F = 0 (everything streamed), alternating, one file per round: does the host's memory
    # rate move the streamed path's decode as it moves the CPU share's?
    for round in ${ROUNDS:-1 2 3}; do
        cells 100 llama-3-8b:128K:24GB "validation-share-ab-planned-$round.jsonl"
        cells 100 llama-3-8b:128K:24GB:F=0 "validation-share-ab-streamed-$round.jsonl"
    done ;;
summary)
    python3 benchmarks/validate.py summarize "$RESULTS/validation.jsonl" --name validation --dir "$RESULTS" ;;
*)
    usage "gpu-tests, profile, long, longest, tail, summary, profile-only, reduced, h200-short, h200-long, choices, rebalance, rebalance-ab, share-ab" ;;
esac
