"""Does the CPU share's kernel read a store written by the GPU (DMA, real data) slower than one the CPU filled with a
constant? The same pinned store read by the decode kernel after each way of filling it, alone and beside
host-to-device copies, in one process.

    PYTHONPATH=. python3 benchmarks/host_store_data_probe.py --gib 12 --out $OUT/host-store-data.json

Why: on the H200 machine (2026-12-01) the kernel read 24.6-28.2 GB/s in decode after whole prefills and 33 GB/s in
tail probes, whose older rows the CPU had zeroed; the host probes (host_kv.py) all read constant-filled rows.
The store: ``--gib`` GiB, advised to huge pages, touched, page-locked with cudaHostRegister as the executor's
(kv/host_store.py), viewed as K, V [2, 8, T, 128] bf16 (Llama-3-8B's decode shape). Fills, in order:

    cpu-constant   fill_(0.5) on the CPU
    dma-random     d2h copies of a random bf16 GPU tensor (N(0, 1)), the way a prefill's write-back lands
    dma-constant   d2h copies of a constant GPU tensor
    cpu-random     a random 64 MiB block copied over the store by the CPU
    cpu-constant   again (drift over the probe's time)

After each fill the kernel (attention/host_attention.py, the run's thread count) reads rows [0, S) of the 8 heads
in turn from distinct stretches of the store (S = --key-tokens), for --seconds alone and for --seconds while the
h2d stream copies another stretch of the store to the GPU without pause (the decode's condition). Rows: fill,
kernel GB/s alone, kernel GB/s beside DMA, DMA GB/s beside the kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.attention.host_attention import host_partial_attention  # noqa: E402
from executor.engine.host_share import default_host_threads  # noqa: E402
from executor.runtime.host_pages import advise_huge_pages  # noqa: E402

KV_HEADS, RATIO, HEAD_DIM = 8, 4, 128
DMA_BLOCK_BYTES = 64 << 20


def kernel_rate(kv: torch.Tensor, query: torch.Tensor, key_tokens: int, threads: int, seconds: float) -> float:
    """Bytes per second of K, V read by the kernel over consecutive stretches of ``key_tokens`` rows per head."""
    stretches = kv.shape[2] // key_tokens // 2          # the first half of the store; DMA reads the second
    nbytes = 2 * KV_HEADS * key_tokens * HEAD_DIM * kv.element_size()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 3:
        first = (calls % stretches) * key_tokens
        host_partial_attention(query, kv[0, :, first:first + key_tokens], kv[1, :, first:first + key_tokens],
                               scale=HEAD_DIM ** -0.5, threads=threads)
        calls += 1
    return calls * nbytes / (time.perf_counter() - start)


def queue_dma(flat: torch.Tensor, device: torch.device, stream: torch.cuda.Stream, seconds: float, rate_guess: float):
    """Queue h2d copies of the store's second half, enough for ``seconds`` at ``rate_guess``; (start, end) events."""
    half = flat.numel() // 2
    target = torch.empty(DMA_BLOCK_BYTES, dtype=torch.uint8, device=device)
    blocks = max(1, int(seconds * rate_guess / DMA_BLOCK_BYTES))
    per_pass = max(1, half // DMA_BLOCK_BYTES)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        begin.record(stream)
        for index in range(blocks):
            offset = half + (index % per_pass) * DMA_BLOCK_BYTES
            target.copy_(flat[offset:offset + DMA_BLOCK_BYTES], non_blocking=True)
        end.record(stream)
    return begin, end, blocks * DMA_BLOCK_BYTES, target


def fill(name: str, flat: torch.Tensor, kv: torch.Tensor, device: torch.device) -> float:
    start = time.perf_counter()
    typed = flat.view(torch.bfloat16)
    if name == "cpu-constant":
        kv.fill_(0.5)
    elif name == "cpu-random":
        block = torch.randn(DMA_BLOCK_BYTES // 2, dtype=torch.bfloat16)
        for offset in range(0, typed.numel() - block.numel() + 1, block.numel()):
            typed[offset:offset + block.numel()].copy_(block)
    else:
        source = (torch.randn if name == "dma-random" else torch.ones)(DMA_BLOCK_BYTES // 2, dtype=torch.bfloat16,
                                                                         device=device)
        for offset in range(0, typed.numel() - source.numel() + 1, source.numel()):
            typed[offset:offset + source.numel()].copy_(source, non_blocking=True)
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=12.0)
    parser.add_argument("--key-tokens", type=int, default=65536)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("host_store_data_probe: needs a CUDA GPU (the DMA fills and the copies beside the kernel)",
              file=sys.stderr)
        return 2
    device = torch.device("cuda")
    threads = default_host_threads()
    torch.set_num_threads(threads)
    nbytes = int(args.gib * (1 << 30)) // (1 << 21) * (1 << 21)
    flat = torch.empty(nbytes, dtype=torch.uint8)
    advise_huge_pages(flat)
    flat.zero_()
    code = torch.cuda.cudart().cudaHostRegister(flat.data_ptr(), nbytes, 1)
    if int(code) != 0:
        print(f"host_store_data_probe: cudaHostRegister failed ({code})", file=sys.stderr)
        return 1
    tokens = nbytes // (2 * KV_HEADS * HEAD_DIM * 2)
    kv = flat.view(torch.bfloat16)[: 2 * KV_HEADS * tokens * HEAD_DIM].view(2, KV_HEADS, tokens, HEAD_DIM)
    query = torch.randn(KV_HEADS, RATIO, HEAD_DIM, dtype=torch.bfloat16)
    stream = torch.cuda.Stream(device)
    rows = []
    try:
        host_partial_attention(query, kv[0, :, :4096], kv[1, :, :4096], scale=HEAD_DIM ** -0.5, threads=threads)
        for name in ("cpu-constant", "dma-random", "dma-constant", "cpu-random", "cpu-constant"):
            fill_s = fill(name, flat, kv, device)
            alone = kernel_rate(kv, query, args.key_tokens, threads, args.seconds)
            begin, end, dma_bytes, _target = queue_dma(flat, device, stream, args.seconds * 1.5, 55e9)
            beside = kernel_rate(kv, query, args.key_tokens, threads, args.seconds)
            end.synchronize()
            dma_rate = dma_bytes / (begin.elapsed_time(end) / 1e3)
            row = {"fill": name, "fill_s": fill_s, "kernel_alone_bytes_per_s": alone,
                   "kernel_beside_dma_bytes_per_s": beside, "dma_beside_kernel_bytes_per_s": dma_rate}
            rows.append(row)
            print(f"{name:13s} fill {fill_s:5.1f} s  kernel alone {alone / 1e9:5.1f} GB/s, beside DMA "
                  f"{beside / 1e9:5.1f} GB/s; DMA {dma_rate / 1e9:5.1f} GB/s", flush=True)
    finally:
        torch.cuda.synchronize(device)
        torch.cuda.cudart().cudaHostUnregister(flat.data_ptr())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                                    "threads": threads, "store_bytes": nbytes, "key_tokens": args.key_tokens,
                                    "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
