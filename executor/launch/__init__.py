"""Run one plan by heads over N ranks (tensor parallelism): start the processes, shard, run, gather, report.

    result = launch_tensor_parallel(TensorJob(ranks=2, device_type="cuda", plan=plan, model=RandomModel(spec,
                                              "bfloat16", seed=0), input_ids=ids, new_tokens=16))
    result.report                   rank 0's RunReport: per rank (``gpus``) and total

``model`` is a picklable factory of the full model on a device (inputs/model_loader.py RandomModel, CheckpointModel).
Start-up: one process per rank, started here with torch.multiprocessing (spawn on GPUs; fork on the CPU, after
pre-importing: _start_method), torch.distributed over NCCL on GPUs (rank r on cuda:r) and gloo on the CPU
(``device_type="cpu"``: N ranks on the CPU, for tests). Launched by
torchrun instead (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set), the calling process is one rank and the
function returns the result on rank 0 and None elsewhere. Each rank:
    1. builds the same full model (``model(device)``: random weights are seeded per parameter, so every rank
       draws the unsharded model's weights), shards it (parallel/tensor.py shard_model), caps its GPU at the
       plan's budget once the full weights are gone;
    2. runs api.run_plan on one stage of all layers on its device with ``heads`` = its local H_q / N, H_kv / N
       (its own host store on its GPU's NUMA node, its own resident heads: ``resident_per_rank`` or the plan's,
       its own links); decode runs eagerly (no CUDA graph over the collectives);
    3. sends its Measurement to rank 0, which merges them (one ``stages`` entry per rank, counters and host
       stores summed, GPU figures of the fullest rank) and builds the report.
Faults: a rank whose run stops (GPU OOM, Ctrl-C: faults.RunFault) has already released its stores (runner.execute's
finally: pinned pages unregistered); it writes its partial report and exits with the fault's code. The others are
then blocked in a collective that will never complete: the launcher waits FAULT_GRACE_S for them, then terminates
and kills them (the OS releases their pinned pages with the process), and raises the fault with that partial
report. Ctrl-C in the launcher is forwarded to every rank as SIGINT (a terminal sends it to all of them anyway),
then the same. The report is built on a rank (rank 0, or the rank that faulted) and written by the caller.
Leaves out: several hosts, loading only each rank's shard of a checkpoint, a progress bar.
Modules: job.py (TensorJob, TensorResult, the checks), processes.py (start-up, watching, faults, the result),
rank.py (one rank's build, shard, run, and rank 0's merge).
"""

from executor.inputs.model_loader import CheckpointModel, RandomModel  # noqa: F401  (part of this API)
from executor.launch.job import TensorJob, TensorResult, check_job  # noqa: F401
from executor.launch.processes import launch_tensor_parallel, torchrun_rank  # noqa: F401
