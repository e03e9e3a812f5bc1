"""The executor: head-offloaded KV stores, attention, the chunked prefill and decode loop on transformers, run
reports, and the profiler that measures the kernels and copies the executor runs. Imports torch; the planner
never imports this package.

Subpackages by responsibility, bottom to top (imports point down; tests/unit/test_import_graph.py checks it):

    settings.py   ExecutionSettings, SplitOptions, RunOptions: typed knobs passed in, no mutable globals
    faults.py     RunFault (partial report attached), RunOutOfMemory, RunInterrupted, hardware mismatch
    runtime/      streams and events, the timing helper, GPU budget and memory, host memory, NUMA, the stream
                  wait on a host counter (stream_wait.py: the GPU waits for the CPU share on its stream)
    kv/           KVLayout (the shapes), HostKVStore (pinned host rows), GpuKVStore (resident rows, ping-pong slots),
                  saved contexts (context_manifest.py, context_save.py, context_load.py, fingerprint.py, rows.py)
    attention/    attend_chunk over backends (flash, flash_attn, cudnn-split, math), the log-sum-exp merge (eager
                  and Triton), decode attention with a device-held length
    engine/       OffloadEngine (the per-layer, per-group offload loop and its transfers), the AttentionInterface
                  function (registered explicitly when a run selects it), OffloadCache
    parallel/     pipeline stages over several devices and the engine that routes layers to them; the tensor-parallel
                  sharding of every layer's heads (tensor.py)
    generation/   execute() and the RunLoop (prefill, decode), the CUDA-graph decode step, warm-up, tail probe,
                  the Measurement
    report/       RunReport schema, assembly from plan + measurement, report.md, plots, verification
    inputs/       models (random weights, checkpoints) and prompts
    api.py        run_plan(): the Python entry point the CLI uses
    profiler/     headplan profile: measures this machine with the executor's own kernels
    launch/       several GPUs by heads: one process per rank (spawn or torchrun), each running api.run_plan on
                  its shard; rank 0 merges the measurements into the report
"""
