#!/usr/bin/env bash
# Where the GPU time goes (benchmarks/kernel_profile.py: headplan run under torch.profiler, kernel time summed by
# kind) -> benchmarks/results/<date>-<machine>/kernels-*.json.
#   prefill:  Llama-3-8B, 128K prefill under 24 GB (the planner's knobs) -> kernels-prefill-128k-24gb.json
#   decode:   Llama-3-8B, 32K under 24 GB, every KV head resident: the decode loop from the last prefill chunk on,
#             CUDA kernels and Python's cProfile of the host loop -> kernels-decode-32k-24gb{,-cprofile}.*
source "$(dirname "$0")/common.sh"
kp() { OUT=$RESULTS timeout "$1" python3 benchmarks/kernel_profile.py "${@:2}"; }
case "$PART" in
prefill)
    kp 200 --name kernels-prefill-128k-24gb -- --hw "$(plan_profile)" --model llama-3-8b --context 128K \
        --gpu-mem 24GB --new-tokens 2 ;;
decode)
    kp 120 --name kernels-decode-32k-24gb --from-chunk last -- --hw "$(plan_profile)" --model llama-3-8b \
        --context 32K --gpu-mem 24GB --new-tokens 33
    kp 120 --name kernels-decode-32k-24gb-cprofile --from-chunk last --cprofile -- --hw "$(plan_profile)" \
        --model llama-3-8b --context 32K --gpu-mem 24GB --new-tokens 33 ;;
*)
    usage "prefill, decode" ;;
esac
