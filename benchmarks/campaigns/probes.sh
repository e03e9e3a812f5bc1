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
#   host-pages:          the host store in 4 KiB against huge pages: touch, pinning, the CPU share's kernel
#                        -> host-pages-probe.json
#   pages-ab:            512K / 24 GB decode with the CPU share, the store in huge pages and in 4 KiB pages,
#                        alternating (HEADPLAN_HOST_PAGES) -> cpu-share-pages-ab.jsonl
#   host-drift:          the CPU share's kernel and a plain sum over one store for 150 s, a fresh store every
#                        30 s: does the host's memory rate hold still -> host-rate-drift.json
#   host-memory-map:     every 8 GiB piece of host memory read twice (sum and the CPU share's kernel): is some of it
#                        slower (placement) or all of it at times (drift) -> host-memory-map.json
#   prefill-attention:   a 128K prefill's attention calls replayed alone: the executor's calls, the chunk part once per
#                        layer, one call per layer; SM clock and power sampled -> prefill-attention-probe-*.json
#   host-store-data:     the CPU share's kernel over a pinned store filled by the CPU (constant, random) and by
#                        DMA (random, constant), alone and beside h2d copies -> host-store-data.json
#   runtime-memory:      the profile's runtime memory (cuBLAS workspaces dropped) and compiled elementwise rate,
#                        each in a fresh process, into a copy of $PROFILE -> profile-updated.json
#   sustained:           the prefill's attention and matmuls sustained for seconds against their bursts (random,
#                        with DMA beside, zero K/V), SM clock sampled; then the square causal cuDNN points and the
#                        sustained ratios into a copy of $PROFILE; the chunk part on flash against cuDNN at 4K chunks
#                        -> sustained-probe.json, profile-sustained.json, split-variants-128k-chunk-part-backend.json
#   gemma-processes:     which processes hold GPU memory in a Gemma-2-9B run (FlexAttention compiles), with
#                        inductor's compile-worker pool and without -> gpu-processes-gemma2-*.json
source "$(dirname "$0")/common.sh"
py() { OUT=$RESULTS PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} timeout "$1" python3 "${@:2}"; }
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
host-pages)
    py 200 benchmarks/host_pages_probe.py --gib 8 --out "$RESULTS/host-pages-probe.json" ;;
pages-ab)
    n=0
    for pages in huge base huge base; do  # one file per run: validate.py skips a cell its file already holds
        n=$((n + 1))
        HEADPLAN_HOST_PAGES=$pages cells 110 llama-3-8b:512K:24GB:tail=1:F=0.45 cpu-share-pages-ab-$n-$pages.jsonl
    done ;;
host-drift)
    py 200 benchmarks/host_rate_drift.py --gib 16 --seconds 150 --out "$RESULTS/host-rate-drift.json" ;;
host-memory-map)
    py 300 benchmarks/host_memory_map.py --gib 8 --out "$RESULTS/host-memory-map.json" ;;
prefill-attention)
    py 150 benchmarks/prefill_attention_probe.py --context 128K --chunk 8K --group 2 --resident 2 \
        --out "$RESULTS/prefill-attention-probe-c8k-g2.json"
    py 150 benchmarks/prefill_attention_probe.py --context 128K --chunk 4K --group 4 --resident 2 \
        --out "$RESULTS/prefill-attention-probe-c4k-g4.json" ;;
host-store-data)
    py 200 benchmarks/host_store_data_probe.py --gib 12 --out "$RESULTS/host-store-data.json" ;;
runtime-memory)
    py 120 benchmarks/profile_section.py --section runtime-memory --update "$PROFILE" --out /tmp/profile-rm.json &&
    py 200 benchmarks/profile_section.py --section elementwise --update /tmp/profile-rm.json \
        --out "$RESULTS/profile-updated.json" ;;
sustained)
    py 120 benchmarks/sustained_probe.py --out "$RESULTS/sustained-probe.json"
    py 150 benchmarks/profile_section.py --section cudnn-causal --update "$PROFILE" --out /tmp/profile-cc.json &&
    py 100 benchmarks/profile_section.py --section sustained --update /tmp/profile-cc.json \
        --out "$RESULTS/profile-sustained.json"
    py 240 benchmarks/split_variants.py --name split-variants-128k-chunk-part-backend.json \
        --variants 4K:2:90:flash:whole:compiled,4K:2:90:cudnn:whole:compiled,4K:2:90:flash:whole:compiled,4K:2:90:cudnn:whole:compiled ;;
gemma-processes)
    run_gemma() {  # NAME [ENV=VALUE ...]: a 128K Gemma-2-9B tail probe under 24 GB, nvidia-smi sampled
        local name=$1; shift
        env "$@" PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} timeout 200 python3 benchmarks/gpu_process_memory.py \
            --out "$RESULTS/gpu-processes-gemma2-$name.json" -- python3 -m headplan.cli run --device cuda \
            --model gemma-2-9b --context 128K --chunk-size 1024 --heads-per-group 1 --resident-heads 1 \
            --gpu-mem 24GB --hw "$(plan_profile)" --tail-chunks 1 --new-tokens 2 --decode-tokens 2 --no-progress \
            --quiet --out "/tmp/gemma-$name"
        cp "/tmp/gemma-$name/report.json" "$RESULTS/gpu-processes-gemma2-$name-report.json" 2>/dev/null
    }
    python3 -c "import pynvml" 2>/dev/null && echo "pynvml: present" || echo "pynvml: missing"
    run_gemma pool
    run_gemma one-thread TORCHINDUCTOR_COMPILE_THREADS=1 ;;
*)
    usage "split-chunk-backend, split-merge, attention-split, decode-varlen, decode-cap, host-width, baseline, host-pages, pages-ab, host-drift, host-memory-map, prefill-attention, host-store-data, runtime-memory, sustained, gemma-processes" ;;
esac
