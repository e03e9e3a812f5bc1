"""OffloadEngine: the per-layer head-offload loop of one device, with its transfers and events.

Called by the registered attention function (engine/registration.py) for each decoder layer of each chunk
[s, s + c) (decode: c = 1), with q [1, H_q, c, d] and the chunk's k, v [1, H_kv, c, d] from the unmodified model
code (after RoPE; engine/cache.py OffloadCache.update passes them through):
  1. k, v made contiguous [H_kv, c, d]; the offloaded heads' rows go to the host store at [s, s + c) on the
     d2h stream (one copy per head per K/V; the tensors stay alive through record_stream);
  2. resident heads [0, r_l): chunk written into the resident store, attention over [0, s + c);
  3. each offloaded group g (slot g % 2 in fetch order): its past [0, s) was prefetched into the slot on the
     h2d stream (after the slot's previous reader released it and after the layer's last write-back); the
     compute stream waits for the fetch, writes the chunk at [s, s + c), attends, releases the slot; before
     attending it queues the prefetch of the next group in order - the next layer's first group after a
     layer's last, and the next forward's first when the runner says one follows - so copies overlap
     attention, o_proj and the MLP.
  4. returns the output [1, c, H_q, d] assembled over all query heads.
cudnn-split prefill (SplitOptions.chunk_part "layer", the default): before step 2 the chunk's causal part against
itself is computed once for all H_q query heads (attention/kernels.py split_chunk_part, out [1, H_q, c, d], lse
[1, H_q, c]); steps 2 and 3 then attend each head set's past [0, s) alone and merge it with the set's rows of that
part (attend_past), and the chunk's K, V are not copied into the slots.
Decode with ``device_position`` set (the CUDA-graph decode step, generation/decode_graph.py; every head resident):
the token's K, V go to the resident store at the device-held position and attention reads [0, s + 1) with the
key length on the device (attention/decode.py), so the step has fixed shapes and host arguments.
Sliding-window layers (layout.window(l) = W, Gemma-2's every other layer, Mistral v0.1's every layer): the layer's
last W - 1 past tokens of every KV head stay on the GPU in order (kv/gpu_store.py window store [H_kv, W - 1, d]);
the chunk attends to [held past, chunk] under the windowed lower-right causal mask, then the store keeps the last
W - 1 tokens of the two. No host rows, no transfers: query p never sees a key older than p - W + 1.
Soft-capped scores (Gemma-2's ``softcap``) go to every attention call (attention/kernels.py).
No host synchronisation anywhere here. Leaves out: masks (it owns causality), dropout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from executor.attention.decode import DevicePosition, attend_decode, write_token
from executor.attention.kernels import attend_chunk, attend_partial, attend_past, attention_flops, split_chunk_part
from executor.attention.lse import merge_by_lse
from executor.engine.counters import PhaseCounters, Position
from executor.engine.host_share import HostShare
from executor.kv.gpu_store import GpuKVStore
from executor.kv.host_store import HostKVStore
from executor.kv.layout import KVLayout
from executor.runtime.events import EventRecorder
from executor.runtime.streams import StreamSet
from executor.settings import SplitOptions


@dataclass
class OffloadEngine:
    """Owns the stores and streams of one run and performs the per-layer, per-group attention loop."""

    layout: KVLayout
    host: HostKVStore
    gpu: GpuKVStore
    streams: StreamSet
    backend: str
    decode_backend: str = "flash"
    split: SplitOptions = field(default_factory=SplitOptions)
    """the cudnn-split knobs (settings.py), passed to every prefill attention call"""
    recorder: Optional[EventRecorder] = None
    trace: bool = False
    more_forwards: bool = False
    """set by the runner: another forward follows this one (its first group may be prefetched)"""
    next_phase: str = "prefill"
    """phase of that next forward (the prefetch's bytes are counted there)"""
    position: Position = field(default_factory=Position)
    first_layer: int = 0
    """global index of this engine's layer 0 (a stage of several GPUs holds layers [first_layer, ...))"""
    device_position: Optional[DevicePosition] = None
    """set by the runner for a static decode step (generation/decode_graph.py): decode reads the position from it"""
    host_share: Optional[HostShare] = None
    """decode attends each offloaded head's past [0, floor(F s)) on the CPU (engine/host_share.py); None: F = 0"""
    counters: dict = field(default_factory=dict)
    _pending: dict = field(default_factory=dict)
    _fetch_count: int = 0
    _softcap: Optional[float] = None
    """the layer's attention soft-cap (set by attend_layer for its calls)"""

    def _count(self) -> PhaseCounters:
        return self.counters.setdefault(self.position.phase, PhaseCounters())

    # ---- the layer ------------------------------------------------------------------------------------------
    def attend_layer(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                     past_tokens: int, scale: float, softcap: Optional[float] = None,
                     sliding_window: Optional[int] = None) -> torch.Tensor:
        """q [1, H_q, c, d], chunk k, v [1, H_kv, c, d] -> attention output [1, c, H_q, d] over [0, s + c)
        (over (p - W, p] for query p of a sliding layer). ``layer`` is this engine's own (local) index;
        positions and marks carry first_layer + layer. ``sliding_window``: what the model passes for the layer,
        checked against the layout's window (they must agree, or the run would not be exact)."""
        self.position.layer = self.first_layer + layer
        window = self.layout.window(layer)
        if sliding_window != window:
            raise RuntimeError(f"layer {self.position.layer}: the model attends with sliding_window "
                               f"{sliding_window} but the KV layout has window {window}")
        self._softcap = softcap
        chunk_tokens, head_dim = query.shape[2], query.shape[3]
        self._mark("attn_start", layer=layer)
        key_chunk, value_chunk = key[0].contiguous(), value[0].contiguous()
        out = torch.empty((1, chunk_tokens, self.layout.query_heads, head_dim), dtype=query.dtype,
                          device=query.device)
        out_heads = out.transpose(1, 2)  # [1, H_q, c, d] view
        backend = self.decode_backend if chunk_tokens == 1 else self.backend
        if window is not None:
            self._attend_window(layer, window, query, key_chunk, value_chunk, out_heads, past_tokens, scale,
                                backend)
            self._count().attention_flops += attention_flops(self.layout.query_heads, head_dim, chunk_tokens,
                                                             min(past_tokens, window - 1))
            self._mark("attn_end", layer=layer)
            return out
        self._write_back(layer, past_tokens, key_chunk, value_chunk)
        chunk = self._layer_chunk_part(query, key_chunk, value_chunk, scale, backend)
        if chunk_tokens == 1 and self.device_position is not None:
            self._attend_resident_static(layer, query, key_chunk, value_chunk, out_heads, scale, backend)
        else:
            self._attend_resident(layer, query, key_chunk, value_chunk, out_heads, past_tokens, scale, backend,
                                  chunk)
        host_tokens = self._host_tokens(past_tokens)
        partial = None
        if host_tokens and self.layout.groups_per_layer[layer]:
            self.host_share.submit(layer, query, past_tokens, self.streams, scale=scale)
            partial = self._partial_buffers(layer, query)
            self._count().host_attention_bytes += (2 * self.layout.offloaded_per_layer[layer] * host_tokens *
                                                   head_dim * self.host.keys[layer].element_size())
        for group_idx in range(len(self.layout.groups_per_layer[layer])):
            self._attend_group(layer, group_idx, query, key_chunk, value_chunk, out_heads, past_tokens, scale,
                               backend, partial, chunk)
        if partial is not None:
            self._merge_host_share(layer, partial, out_heads)
        self._count().attention_flops += attention_flops(self.layout.query_heads, head_dim, chunk_tokens,
                                                         past_tokens)
        self._mark("attn_end", layer=layer)
        return out

    def _attend_window(self, layer, window, query, key_chunk, value_chunk, out_heads, past_tokens, scale, backend):
        """A sliding layer: keys [s - n, s + c) = [held past (n = min(s, W - 1)), chunk], windowed causal; then
        the window store keeps the last W - 1 of them (a new tensor is read, so the copy never overlaps)."""
        held = min(past_tokens, window - 1)
        store_keys, store_values = self.gpu.window_keys[layer], self.gpu.window_values[layer]
        keys = torch.cat([store_keys[:, :held], key_chunk], dim=1)  # [H_kv, n + c, d]
        values = torch.cat([store_values[:, :held], value_chunk], dim=1)
        attend_chunk(query, keys[None], values[None], scale=scale, backend=backend, out=out_heads,
                     split=self.split, softcap=self._softcap, window=window)
        total = keys.shape[1]
        kept = min(total, window - 1)
        store_keys[:, :kept].copy_(keys[:, total - kept:])
        store_values[:, :kept].copy_(values[:, total - kept:])

    def _layer_chunk_part(self, query, key_chunk, value_chunk, scale, backend):
        """cudnn-split prefill with SplitOptions.chunk_part "layer": the chunk against itself for all of the layer's
        query heads in one call, (out [1, H_q, c, d], lse [1, H_q, c]); None where the head sets attend it
        themselves (decode, other backends, soft-capped scores, chunk_part "group")."""
        if (backend != "cudnn-split" or query.shape[2] == 1 or self.split.chunk_part != "layer"
                or self._softcap is not None):
            return None
        return split_chunk_part(query, key_chunk[None], value_chunk[None], scale=scale, split=self.split)

    def _attend_with_chunk(self, rows, query, keys, values, chunk, out_heads, past_tokens, scale) -> None:
        """A head set's query rows over its past keys, values [G, >= s, d] merged with its rows of the layer's
        chunk part; the first chunk (no past) takes the chunk part's rows as they are."""
        if past_tokens == 0:
            out_heads[:, rows].copy_(chunk[0][:, rows])
            return
        attend_past(query[:, rows], keys[None, :, :past_tokens], values[None, :, :past_tokens], chunk[0][:, rows],
                    chunk[1][:, rows], scale=scale, out=out_heads[:, rows], split=self.split)

    def _attend_resident(self, layer, query, key_chunk, value_chunk, out_heads, past_tokens, scale, backend,
                         chunk=None):
        resident = self.layout.resident_per_layer[layer]
        if not resident:
            return
        chunk_tokens = key_chunk.shape[1]
        end = past_tokens + chunk_tokens
        keys, values = self.gpu.resident_keys[layer], self.gpu.resident_values[layer]
        keys[:, past_tokens:end].copy_(key_chunk[:resident])
        values[:, past_tokens:end].copy_(value_chunk[:resident])
        query_rows = resident * self._ratio
        if chunk is not None:
            return self._attend_with_chunk(slice(0, query_rows), query, keys, values, chunk, out_heads,
                                           past_tokens, scale)
        attend_chunk(query[:, :query_rows], keys[None, :, :end], values[None, :, :end], scale=scale,
                     backend=backend, out=out_heads[:, :query_rows], split=self.split, softcap=self._softcap)

    def _attend_resident_static(self, layer, query, key_chunk, value_chunk, out_heads, scale, backend):
        """Decode of an all-resident layer at ``device_position`` (no host int in any argument)."""
        resident = self.layout.resident_per_layer[layer]
        if resident != self.layout.kv_heads:
            raise RuntimeError(f"a static decode step needs every KV head resident; layer {layer} holds "
                               f"{resident} of {self.layout.kv_heads}")
        keys, values = self.gpu.resident_keys[layer], self.gpu.resident_values[layer]
        write_token(keys, values, key_chunk, value_chunk, self.device_position)
        attend_decode(query, keys, values, self.device_position, scale=scale, backend=backend, out=out_heads)

    def count_decode_token(self, past_tokens: int) -> None:
        """Count one decode token's attention work (a replayed graph step does not pass through attend_layer)."""
        counters = self.counters.setdefault("decode", PhaseCounters())
        counters.attention_flops += self.layout.num_layers * attention_flops(
            self.layout.query_heads, self.layout.head_dim, 1, past_tokens)

    def _attend_group(self, layer, group_idx, query, key_chunk, value_chunk, out_heads, past_tokens, scale,
                      backend, partial=None, chunk=None):
        """Group (layer, group_idx): slot rows [0, s - s_h) hold its past [s_h, s) (s_h = 0 but in a decode step
        with a host share), the chunk goes after them. ``partial`` (host share): (out, lse) buffers of the
        layer's offloaded query rows that receive this group's partial result instead of ``out_heads``.
        ``chunk`` (the layer's chunk part, _layer_chunk_part): the group attends its past only and merges; the
        chunk's K, V are not written into the slot (nothing reads them there)."""
        streams, heads = self.streams, self.layout.groups_per_layer[layer][group_idx]
        slot = self._take_fetch(layer, group_idx, past_tokens)
        self._prefetch_after(layer, group_idx, past_tokens, key_chunk.shape[1])
        if self.trace:
            self._mark("group_start", layer=layer, group=group_idx)
        streams.wait(streams.compute, streams.slot_fetched[slot])
        streamed = past_tokens - self._host_tokens(past_tokens)
        first, count, end = heads.start, len(heads), streamed + key_chunk.shape[1]
        keys, values = self.gpu.slot_keys[slot][:count], self.gpu.slot_values[slot][:count]
        rows = slice(first * self._ratio, (first + count) * self._ratio)
        if chunk is None:  # the chunk's K, V after the past, for a call that attends the chunk itself
            keys[:, streamed:end].copy_(key_chunk[first: first + count])
            values[:, streamed:end].copy_(value_chunk[first: first + count])
        if chunk is not None:
            self._attend_with_chunk(rows, query, keys, values, chunk, out_heads, past_tokens, scale)
        elif partial is None:
            attend_chunk(query[:, rows], keys[None, :, :end], values[None, :, :end], scale=scale,
                         backend=backend, out=out_heads[:, rows], split=self.split, softcap=self._softcap)
        else:
            if self._softcap:
                raise ValueError("a decode CPU share with soft-capped attention (Gemma-2) is not supported: "
                                 "use --cpu-share 0")
            offset = self.layout.resident_per_layer[layer] * self._ratio
            part_rows = slice(rows.start - offset, rows.stop - offset)
            out, lse = attend_partial(query[:, rows], keys[None, :, :end], values[None, :, :end], scale=scale,
                                      backend=backend)
            partial[0][:, part_rows].copy_(out)
            partial[1][:, part_rows].copy_(lse)
        streams.record(streams.slot_released[slot], streams.compute)
        if self.trace:
            self._mark("group_end", layer=layer, group=group_idx)

    def _host_tokens(self, past_tokens: int) -> int:
        """s_h of a decode step with a host share (engine/host_share.py), else 0 (prefill streams everything)."""
        if self.host_share is None or self.position.phase != "decode":
            return 0
        return self.host_share.tokens(past_tokens)

    def _partial_buffers(self, layer: int, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The GPU share's (out [1, rows, 1, d] q.dtype, lse [1, rows, 1] float32) for the layer's offloaded rows."""
        rows = self.layout.offloaded_per_layer[layer] * self._ratio
        return (torch.empty((1, rows, 1, query.shape[3]), dtype=query.dtype, device=query.device),
                torch.empty((1, rows, 1), dtype=torch.float32, device=query.device))

    def _merge_host_share(self, layer: int, partial, out_heads: torch.Tensor) -> None:
        """Join the host share and merge it with the GPU share (float32 log-sum-exp) into the output rows."""
        host_out, host_lse, timing = self.host_share.collect(layer)
        self._count_host_timings([timing] if timing is not None else self.host_share.take_timings())
        merged, _ = merge_by_lse([partial[0], host_out], [partial[1], host_lse])
        first = self.layout.resident_per_layer[layer] * self._ratio
        out_heads[:, first:].copy_(merged)

    def _count_host_timings(self, timings) -> None:
        """The host share's per-layer timelines into the decode counters (the only phase it runs in)."""
        counters = self.counters.setdefault("decode", PhaseCounters())
        for timing in timings:
            counters.host_attention_s += timing.kernel_s
            counters.host_attention_calls += 1
            counters.host_attention_start_delay_s += timing.start_delay_s
            counters.host_join_wait_s += timing.join_wait_s

    def settle_host_share(self) -> None:
        """Wait for the host share's jobs still in flight and count their timelines (before the counters are read;
        the stream-wait path counts a job when the main thread next looks, not when it ends)."""
        if self.host_share is not None:
            self._count_host_timings(self.host_share.take_timings(wait=True))

    def close(self) -> None:
        """Release the GPU store and stop the host-share worker."""
        self.gpu.close()
        if self.host_share is not None:
            self.host_share.close()
            self.host_share = None

    @property
    def _ratio(self) -> int:
        return self.layout.query_heads // self.layout.kv_heads

    # ---- transfers ------------------------------------------------------------------------------------------
    def _write_back(self, layer: int, past_tokens: int, key_chunk: torch.Tensor, value_chunk: torch.Tensor):
        """The chunk's offloaded heads [H_kv - r_l, c, d] -> host store rows at [s, s + c), on the d2h stream."""
        resident, streams = self.layout.resident_per_layer[layer], self.streams
        offloaded = self.layout.kv_heads - resident
        if not offloaded:
            return
        end = past_tokens + key_chunk.shape[1]
        streams.record(streams.chunk_ready, streams.compute)
        with streams.on(streams.d2h):
            streams.wait(streams.d2h, streams.chunk_ready)
            if self.trace:
                self._mark("d2h_start", lane="d2h", layer=layer)
            host_keys, host_values = self.host.keys[layer], self.host.values[layer]
            for row in range(offloaded):
                host_keys[row, past_tokens:end].copy_(key_chunk[resident + row], non_blocking=True)
                host_values[row, past_tokens:end].copy_(value_chunk[resident + row], non_blocking=True)
            if self.trace:
                self._mark("d2h_end", lane="d2h", layer=layer)
            streams.record(streams.written_back[layer], streams.d2h)
        if streams.cuda:  # the chunk's k, v must outlive the copies reading them
            key_chunk.record_stream(streams.d2h)
            value_chunk.record_stream(streams.d2h)
        self._count().d2h_bytes += 2 * offloaded * key_chunk[0].numel() * key_chunk.element_size()

    def _fetch(self, layer: int, group_idx: int, past_tokens: int) -> None:
        """Queue group (layer, group_idx)'s past K, V [0, s) host -> next ping-pong slot, on the h2d stream."""
        slot, streams = self._fetch_count % 2, self.streams
        self._fetch_count += 1
        heads, resident = self.layout.groups_per_layer[layer][group_idx], self.layout.resident_per_layer[layer]
        with streams.on(streams.h2d):
            streams.wait(streams.h2d, streams.slot_released[slot])  # write-after-read on the slot
            streams.wait(streams.h2d, streams.written_back[layer])  # the host rows [0, s) are complete
            start = self._host_tokens(past_tokens)      # the host share's rows [0, s_h) stay on the host
            streamed = past_tokens - start
            if streamed:
                if self.trace:
                    self._mark("h2d_start", lane="h2d", layer=layer, group=group_idx)
                slot_keys, slot_values = self.gpu.slot_keys[slot], self.gpu.slot_values[slot]
                host_keys, host_values = self.host.keys[layer], self.host.values[layer]
                for index, head in enumerate(heads):
                    slot_keys[index, :streamed].copy_(host_keys[head - resident, start:past_tokens],
                                                      non_blocking=True)
                    slot_values[index, :streamed].copy_(host_values[head - resident, start:past_tokens],
                                                        non_blocking=True)
                if self.trace:
                    self._mark("h2d_end", lane="h2d", layer=layer, group=group_idx)
            streams.record(streams.slot_fetched[slot], streams.h2d)
        self._pending[(layer, group_idx)] = (slot, past_tokens, start)
        counters = self._count()
        counters.h2d_bytes += 2 * len(heads) * streamed * self.layout.head_dim * self.host.keys[layer].element_size()
        counters.group_fetches += 1

    def _take_fetch(self, layer: int, group_idx: int, past_tokens: int) -> int:
        """The slot holding group (layer, group_idx)'s past; fetched now if no matching prefetch is queued (same
        past s and same first streamed row s_h: a host share changed after the prefetch makes it stale)."""
        pending = self._pending.pop((layer, group_idx), None)
        if pending is None or pending[1:] != (past_tokens, self._host_tokens(past_tokens)):
            self._fetch(layer, group_idx, past_tokens)
            pending = self._pending.pop((layer, group_idx))
        return pending[0]

    def _prefetch_after(self, layer: int, group_idx: int, past_tokens: int, chunk_tokens: int) -> None:
        """Queue the fetch of the group after (layer, group_idx) in loop order, if there is one."""
        groups = self.layout.groups_per_layer
        if group_idx + 1 < len(groups[layer]):
            return self._fetch(layer, group_idx + 1, past_tokens)
        for next_layer in range(layer + 1, self.layout.num_layers):
            if groups[next_layer]:
                return self._fetch(next_layer, 0, past_tokens)
        if self.more_forwards:
            first = next((index for index, layer_groups in enumerate(groups) if layer_groups), None)
            if first is not None:
                phase, self.position.phase = self.position.phase, self.next_phase
                try:
                    self._fetch(first, 0, past_tokens + chunk_tokens)
                finally:
                    self.position.phase = phase

    def _mark(self, name: str, lane: str = "compute", **meta) -> None:
        if "layer" in meta:
            meta["layer"] += self.first_layer
        if self.recorder is not None:
            self.recorder.mark(name, lane=lane, phase=self.position.phase, chunk=self.position.chunk, **meta)
