"""Compiled FlexAttention at Gemma-2-9B shapes (d 256, 2 query heads per KV head, bf16, soft-cap 50) on CUDA:
each kind of call (past / masked / decode) compiled with dynamic=True and with automatic dynamic (None), over
growing key lengths: does it compile, how fast (TFLOP/s), and does any call fall back to the eager flex.
Writes $OUT/flex-compile-probe.json.

    PYTHONPATH=. python3 benchmarks/flex_compile_probe.py     # ~1 minute on the H200
"""
import json, os, sys, time, traceback, warnings
import torch
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention
sys.path.insert(0, os.getcwd())
import executor.attention.flex as fx
dev = "cuda"
res = []
def sm(score, b, h, qi, ki):
    return 50.0 * torch.tanh(score / 50.0)
def timeit(fn, n=3):
    fn(); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n
for dyn in (True, None, False):
    for kind in ("past", "decode", "masked"):
        torch._dynamo.reset()
        entry = fx._ENTRIES[kind]
        comp = torch.compile(entry, dynamic=dyn)
        row = {"dynamic": dyn, "kind": kind, "points": []}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for S in (8192, 12288, 40960, 131072):
                    c = 1 if kind == "decode" else 1024
                    q = torch.randn(1, 2, c, 256, device=dev, dtype=torch.bfloat16)
                    k = torch.randn(1, 1, S, 256, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
                    if kind == "masked":
                        bm = fx.causal_block_mask(c, c + 4095, 4096, torch.device(dev))
                        k, v = k[:, :, :c + 4095], v[:, :, :c + 4095]
                        f = lambda: comp(q, k, v, sm, bm, 0.0625, True)
                        flops = 4 * 2 * 256 * c * 4096
                    else:
                        f = lambda: comp(q, k, v, sm, 0.0625, True)
                        flops = 4 * 2 * 256 * c * S
                    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
                    s = timeit(f)
                    row["points"].append({"S": S, "s": s, "tflops": flops / s / 1e12,
                                          "extra_peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20})
            row["warnings"] = sorted({str(w.message)[:160] for w in caught})
        except Exception as exc:
            row["error"] = "".join(traceback.format_exception_only(type(exc), exc))[:1500]
        print(json.dumps(row), flush=True); res.append(row)
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "flex-compile-probe.json"), "w"), indent=1)
