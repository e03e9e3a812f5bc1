"""attend_flex's compiled entries at Gemma-2-9B shapes on CUDA: rate, eager-fallback warnings and errors, with and
without the entry's Dynamo config patch. Prints one JSON line per call and writes them to
$OUT/flex-entry-probe.jsonl.

    PYTHONPATH=. python3 benchmarks/flex_entry_probe.py       # ~30 s on the H200
"""
import os, sys, time, traceback, warnings, json
import torch
sys.path.insert(0, os.getcwd())
import executor.attention.flex as fx
out = []
def run(label, fn):
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fn(); torch.cuda.synchronize(); t = time.perf_counter(); fn(); fn(); torch.cuda.synchronize()
            s = (time.perf_counter() - t) / 2
        row = {"label": label, "s": s, "warn": sorted({str(x.message)[:100] for x in w})}
    except Exception as e:
        row = {"label": label, "error": "".join(traceback.format_exception_only(type(e), e))[:600]}
    print(json.dumps(row), flush=True); out.append(row)
dev = "cuda"
for S in (16384, 131072):
    q = torch.randn(1, 2, 1024, 256, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, 1, S, 256, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
    run(f"attend_flex past S={S}", lambda: fx.attend_flex(q, k, v, scale=0.0625, softcap=50.0, window=None))
    q1 = q[:, :, :1].contiguous()
    run(f"attend_flex decode S={S}", lambda: fx.attend_flex(q1, k, v, scale=0.0625, softcap=50.0, window=None))
    raw = torch.compile(fx._ENTRIES["past"], dynamic=True)
    run(f"raw past no patch S={S}", lambda: raw(q, k, v, fx._softcap_mod(50.0), 0.0625, True))
with open(os.path.join(os.environ.get("OUT", "/tmp"), "flex-entry-probe.jsonl"), "w") as sink:
    sink.writelines(json.dumps(row) + "\n" for row in out)
