"""The executor: head-offloaded KV store, attention, chunked prefill and decode on transformers, run reports,
and the profiler that measures the kernels and copies the executor runs. Imports torch."""
