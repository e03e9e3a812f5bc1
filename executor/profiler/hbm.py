"""Device-memory bandwidth: a device-to-device copy and a read-only streaming reduction.

Two figures, both over ``hbm_copy_bytes`` of random data:
- copy: ``dst.copy_(src)`` moves n bytes in and n bytes out; reported per direction, n / time (the
  schema's "(read + write) / 2"). On an H100 ~1.5 TB/s per direction (3.0 TB/s of total traffic).
- read: ``src.sum()`` (bf16 on GPU, float32 on CPU; float32 accumulation) reads n bytes and writes nothing: n / time.
  This is what decode does (weights and resident KV are read, not copied); on an H100 it is close to the
  copy's total traffic (~3 TB/s), twice the per-direction copy figure.
The profile's ``hbm_bytes_per_s`` is the read figure, the one decode runs at (notes in the profile say so);
the copy figure goes to the notes and the summary.
On CPU the same code measures DRAM through the caches (sizes well above the last-level cache).
Leaves out: host <-> device copies (pcie.py) and host memcpy (host.py).
"""

from __future__ import annotations

import torch

from executor.profiler.context import ProfileContext, compute_dtype
from planner.units import MIB


def measure_hbm(ctx: ProfileContext) -> dict:
    """{"copy_bytes_per_s" (per direction), "read_bytes_per_s", "spread_rel"} or {} when nothing fits."""
    nbytes = ctx.preset.hbm_copy_bytes
    while nbytes > MIB and not ctx.fits(2 * nbytes):
        nbytes //= 2
    if not ctx.fits(2 * nbytes):
        ctx.note("device memory copy skipped: no room for two buffers")
        return {}
    dtype = compute_dtype(ctx.device)
    element_bytes = torch.tensor([], dtype=dtype).element_size()
    source = ctx.randn(nbytes // element_bytes, dtype=dtype)  # normal numbers: no NaN/denormal slow paths
    target = torch.empty_like(source)
    copy_stats = ctx.time(lambda: target.copy_(source))
    copy_rate = copy_stats.rate(nbytes)
    ctx.progress("memory", f"device copy {nbytes // MIB} MiB (per direction)", f"{copy_rate / 1e9:.0f} GB/s",
                 copy_stats)
    read_stats = ctx.time(lambda: source.sum(dtype=torch.float32))
    read_rate = read_stats.rate(nbytes)
    ctx.progress("memory", f"device read (sum) {nbytes // MIB} MiB", f"{read_rate / 1e9:.0f} GB/s", read_stats)
    return {"copy_bytes_per_s": copy_rate, "read_bytes_per_s": read_rate, "spread_rel": read_stats.spread_rel}
