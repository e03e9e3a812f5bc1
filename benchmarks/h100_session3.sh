#!/usr/bin/env bash
# The third H100 session's measurements (issues 5 and 7), in parts that each fit one 10-minute command.
# Results go to $OUT; copy them into benchmarks/results/ with the device and date.
#   kernels: where the GPU time goes (benchmarks/kernel_profile.py): the 128K 24 GB prefill (issue 7's cell) and
#            the all-resident 32K 24 GB decode (issue 5's worst decode cells), CUDA kernels and Python's cProfile
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
PROFILE=${PROFILE:-hwprofiles/catalog/h100-sxm-measured.json}
part=${1:?kernels}
kp() { timeout "$1" python3 benchmarks/kernel_profile.py "${@:2}"; }

case "$part" in
kernels)
    kp 200 --name prefill-128k-24gb -- --hw "$PROFILE" --model llama-3-8b --context 128K --gpu-mem 24GB --new-tokens 2
    kp 120 --name decode-32k-24gb --from-chunk last -- --hw "$PROFILE" --model llama-3-8b --context 32K \
        --gpu-mem 24GB --new-tokens 33
    kp 120 --name decode-32k-24gb-cprofile --from-chunk last --cprofile -- --hw "$PROFILE" --model llama-3-8b \
        --context 32K --gpu-mem 24GB --new-tokens 33
    ;;
esac
