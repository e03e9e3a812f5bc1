"""Saved contexts on CUDA: a bf16 save from the pinned host store and the GPU-resident heads loads bit-identically
into a run with other knobs (the loaded rows equal the saving run's rows), and the greedy tokens after the load
equal the saving run's on the same prompt. Run on the GPU machine: python -m pytest tests/gpu -m gpu -q"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from executor.generation import runner  # noqa: E402
from executor.generation.runner import execute  # noqa: E402
from executor.kv.context_load import ContextLoader  # noqa: E402
from executor.kv.context_save import ContextSaver  # noqa: E402
from executor.kv.fingerprint import model_fingerprint  # noqa: E402
from executor.settings import ExecutionSettings, RunOptions  # noqa: E402

pytestmark = pytest.mark.gpu
NEW = 4


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return torch.device("cuda", 0)


def test_bf16_save_and_load_on_cuda(cuda, tmp_path, monkeypatch):
    from tests.gpu.test_executor_gpu import model_on

    model = model_on(cuda, torch.bfloat16)
    c = model.config
    ids = torch.randint(0, 1000, (1, 700), generator=torch.Generator().manual_seed(3))
    fingerprint = model_fingerprint(model)
    captured = {}
    real_rows = runner._kv_rows

    def keep_rows(run, parts):  # a copy of the saving run's rows, for the bit-exact comparison
        rows = real_rows(run, parts)
        captured.setdefault("rows", [[r[:700].cpu().clone() for r in rows.rows(l, h)]
                                     for l in range(c.num_hidden_layers) for h in range(c.num_key_value_heads)])
        return rows

    monkeypatch.setattr(runner, "_kv_rows", keep_rows)
    first = execute(model, ids, ExecutionSettings(chunk_size=128, heads_per_group=1, resident_kv_heads=5,
                                                  capacity_tokens=720, attention_backend="flash"),
                    new_tokens=NEW, device=cuda,
                    options=RunOptions(kv_saver=ContextSaver(tmp_path / "ctx", fingerprint, segment_tokens=256,
                                                             progress=False)))
    monkeypatch.setattr(runner, "_kv_rows", real_rows)
    loader = ContextLoader(tmp_path / "ctx", fingerprint=fingerprint, dtype=torch.bfloat16,
                           num_layers=c.num_hidden_layers, kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
                           progress=False)
    loaded_rows = {}

    def grab(run, parts):
        rows = real_rows(run, parts)
        loaded_rows["rows"] = rows
        return rows

    monkeypatch.setattr(runner, "_kv_rows", grab)
    second = execute(model, ids, ExecutionSettings(chunk_size=64, heads_per_group=2, resident_kv_heads=2,
                                                   capacity_tokens=720, attention_backend="flash"),
                     new_tokens=NEW, device=cuda, options=RunOptions(past_loader=loader, warmup=False))
    assert second.loaded_past_tokens == 699 and second.prompt_tokens == 1
    assert second.generated_token_ids[0] == first.generated_token_ids[0]    # bf16: the first token at least
    assert second.kv_reuse["loaded_bytes"] == 700 * 2 * 3 * 4 * 64 * 2       # every segment of the 700 tokens
    rows = loaded_rows["rows"]                  # the load run's stores: rows [0, 699) came from the files
    for index, (k_saved, v_saved) in enumerate(captured["rows"]):
        k_now, v_now = rows.rows(index // c.num_key_value_heads, index % c.num_key_value_heads)
        assert torch.equal(k_now[:699].cpu(), k_saved[:699]) and torch.equal(v_now[:699].cpu(), v_saved[:699])
