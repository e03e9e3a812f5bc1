#!/usr/bin/env bash
# Single-question measurements behind the executor's and the planner's rules
# -> benchmarks/results/<date>-<machine>/*.json (see benchmarks/results/README.md for what each answered).
#   split-chunk-backend: 128K prefill, cudnn-split, the chunk-vs-itself part on flash or cuDNN at 4K and 8K chunks
#                        -> split-variants-128k-chunk-backend.json
#   split-merge:         128K prefill, the eager float32 merge against the one-pass Triton merge
#                        -> split-variants-128k-merge.json
#   attention-split:     cudnn-split against flash at Llama-3-8B prefill shapes, and the past block size
#                        (quick grid) -> attention-split-quick.json
#   decode-varlen:       the flash kernel's varlen form with the key length on the device, against the dense
#                        call (the basis of the CUDA-graph decode) -> decode-varlen-probe.json
#   decode-cap:          does the GPU memory cap change decode time -> decode-cap-probe.json
#   host-width:          the executor's decode host time per layer at three widths -> host-width-probe.json
#   baseline:            transformers' own forward (standard, chunked, offloaded cache) -> transformers-baseline.jsonl
source "$(dirname "$0")/common.sh"
py() { OUT=$RESULTS PYTHONPATH=. timeout "$1" python3 "${@:2}"; }
case "$PART" in
split-chunk-backend)
    py 150 benchmarks/split_variants.py --variants 4K:2:64:flash,4K:2:64:cudnn,8K:2:64:flash,8K:2:64:cudnn
    mv "$RESULTS/split_variants.json" "$RESULTS/split-variants-128k-chunk-backend.json" ;;
split-merge)
    py 150 benchmarks/split_variants.py \
        --variants 8K:2:64:auto:eager,8K:2:64:auto,16K:8:56:auto:eager,16K:8:56:auto,16K:6:40:auto
    mv "$RESULTS/split_variants.json" "$RESULTS/split-variants-128k-merge.json" ;;
attention-split)
    py 300 benchmarks/attention_split_bench.py --quick
    mv "$RESULTS/attention_split.json" "$RESULTS/attention-split-quick.json" ;;
decode-varlen)
    py 200 benchmarks/decode_varlen_probe.py --out "$RESULTS/decode-varlen-probe.json" ;;
decode-cap)
    py 400 benchmarks/decode_cap_probe.py
    mv "$RESULTS/decode_cap_probe.json" "$RESULTS/decode-cap-probe.json" ;;
host-width)
    py 120 benchmarks/host_width_probe.py
    mv "$RESULTS/host_width_probe.json" "$RESULTS/host-width-probe.json" ;;
baseline)
    py 550 benchmarks/transformers_baseline.py --model llama-3-8b --cells standard:32K,chunked:128K,offload:128K \
        --new-tokens 16 --chunk-size 10K --out "$RESULTS/transformers-baseline.jsonl" ;;
*)
    usage "split-chunk-backend, split-merge, attention-split, decode-varlen, decode-cap, host-width, baseline" ;;
esac
