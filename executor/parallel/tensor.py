"""Several GPUs by heads: one process per GPU, each holding 1/N of every decoder layer (tensor parallelism).

The model is sharded by torch's own engine, ``torch.distributed.tensor.parallel.parallelize_module`` over a 1-D
device mesh of the N ranks, with the Megatron plan of a Llama-family layer:
    self_attn.q_proj, k_proj, v_proj    ColwiseParallel   rank r keeps output rows of its heads
                                                          [r H/N, (r + 1) H/N) (contiguous head blocks)
    mlp.gate_proj, up_proj              ColwiseParallel   rank r keeps MLP columns [r I/N, (r + 1) I/N)
    self_attn.o_proj, mlp.down_proj     RowwiseParallel   input columns of its heads / MLP columns; the partial
                                                          outputs are summed by an all-reduce (2 per layer)
    embed_tokens, norms, lm_head        replicated        (planner/tensor_parallel.py counts them on every rank)
Every plan uses ``use_local_output=True``, so the unmodified transformers code sees plain local tensors: q_proj's
output [1, c, H_q/N * d] reshapes with ``view(*input_shape, -1, d)`` into the rank's H_q/N heads, the attention
function (engine/registration.py) receives q [1, H_q/N, c, d], k, v [1, H_kv/N, c, d] and o_proj takes
[1, c, H_q/N * d]. ``config.num_*_heads`` keep the GLOBAL counts: the engine's stores are sized from
``local_heads`` (kv/layout.py HeadCounts), passed to generation/runner.execute explicitly. GQA stays within a
rank because N divides H_kv: query head block r reads KV head block r.

    check_ranks(config, n)          ValueError with the divisors unless n divides H_q, H_kv and I
    local_heads(config, n)          HeadCounts of one rank
    tensor_parallel_plan(model)     {module name: ColwiseParallel | RowwiseParallel}
    shard_model(model, mesh)        parallelize_module in place (the full weights on every rank go in; each rank
                                    keeps its shard: build the same full model on every rank first)
Random weights are built shard-first (inputs/model_loader.py build_random_sharded: meta, shard, materialise, draw
each matrix whole and keep the block); a checkpoint is loaded whole on every rank and then sharded.
Leaves out: process start-up and the run itself (executor/launch/), loading only each rank's shard of a
checkpoint, sequence parallelism, sharding the embeddings or lm_head.
"""

from __future__ import annotations

from typing import Optional

import torch

from executor.kv.layout import HeadCounts

COLUMN_WISE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
ROW_WISE = ("self_attn.o_proj", "mlp.down_proj")


def check_ranks(config, ranks: int) -> None:
    """ValueError (the divisors named) unless ``ranks`` divides H_q, H_kv and the MLP's I columns: neither
    transformers nor torch checks it, and a mismatch would fail mid-forward."""
    from planner.tensor_parallel import check_head_split

    heads = HeadCounts.of_config(config)
    check_head_split(heads.query_heads, heads.kv_heads, ranks)
    if config.intermediate_size % ranks:
        raise ValueError(f"--parallel heads over {ranks} GPUs needs {ranks} to divide the MLP's "
                         f"{config.intermediate_size} columns")


def local_heads(config, ranks: int) -> HeadCounts:
    """The heads one rank's attention sees: H_q / N, H_kv / N of dim d."""
    check_ranks(config, ranks)
    return HeadCounts.of_config(config).shard(ranks)


def tensor_parallel_plan(model) -> dict:
    """parallelize_module's plan for a Llama-family ``*ForCausalLM``: every layer's q, k, v, gate, up column-wise,
    o, down row-wise, all with local outputs."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {}
    for index in range(len(model.model.layers)):
        prefix = f"model.layers.{index}."
        plan.update({prefix + name: ColwiseParallel(use_local_output=True) for name in COLUMN_WISE})
        plan.update({prefix + name: RowwiseParallel(use_local_output=True) for name in ROW_WISE})
    return plan


def shard_model(model, mesh, *, src_data_rank: Optional[int] = 0) -> torch.nn.Module:
    """Shard ``model`` over the 1-D ``mesh`` in place; returns it. Each rank's linear weights become DTensors whose
    local shard is its block (to_local()); the rest is untouched. ``src_data_rank`` 0: rank 0's full weights are
    scattered (every rank built the same model); None: each rank takes its block of its own tensors, no
    communication (a model still on the meta device, inputs/model_loader.py build_random_sharded)."""
    from torch.distributed.tensor.parallel import parallelize_module

    check_ranks(model.config, mesh.size())
    parallelize_module(model, mesh, tensor_parallel_plan(model), src_data_rank=src_data_rank)
    return model


def local_weight_bytes(model) -> int:
    """Bytes of the parameters this rank holds (a DTensor's local shard; plain tensors whole)."""
    total = 0
    for param in model.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        total += local.numel() * local.element_size()
    return total
