"""runtime/host_pages.py (THP mode, aligned interior, the A/B switch, a store's touch), runtime/gpu_memory.py's stack
limit where no CUDA runtime is loaded, runtime/cpu_steal.py's reading of /proc/stat; a CPU run records no GPU
phases."""

import pytest
import torch

from executor.runtime import host_pages
from executor.runtime.cpu_steal import parse_cpu_ticks, read_cpu_ticks, steal_between
from executor.runtime.host_pages import HUGE_PAGE_BYTES, advise_huge_pages, aligned_interior, huge_pages_wanted, thp_mode


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert thp_mode(path) == "madvise"
    path.write_text("[always] madvise never\n")
    assert thp_mode(path) == "always"
    assert thp_mode(tmp_path / "missing") is None


def test_aligned_interior_keeps_whole_huge_pages_only():
    assert aligned_interior(HUGE_PAGE_BYTES + 1, 3 * HUGE_PAGE_BYTES) == (2 * HUGE_PAGE_BYTES, 2 * HUGE_PAGE_BYTES)
    assert aligned_interior(0, 2 * HUGE_PAGE_BYTES) == (0, 2 * HUGE_PAGE_BYTES)
    assert aligned_interior(5, HUGE_PAGE_BYTES) == (HUGE_PAGE_BYTES, 0)


def test_huge_pages_wanted_switch(monkeypatch):
    monkeypatch.delenv(host_pages.ENV, raising=False)
    assert huge_pages_wanted()
    monkeypatch.setenv(host_pages.ENV, "base")
    assert not huge_pages_wanted()
    monkeypatch.setenv(host_pages.ENV, "giant")
    with pytest.raises(ValueError, match="HEADPLAN_HOST_PAGES"):
        huge_pages_wanted()


def test_advise_is_skipped_where_thp_needs_no_asking():
    flat = torch.empty(4 * HUGE_PAGE_BYTES, dtype=torch.uint8)
    assert advise_huge_pages(flat, mode="always") == 0
    assert advise_huge_pages(flat, mode="never") == 0
    assert advise_huge_pages(torch.empty(16, dtype=torch.uint8), mode="madvise") == 0


def test_store_values_survive_either_page_kind(monkeypatch):
    from executor.kv.host_store import HostKVStore
    from executor.kv.layout import ExecutionSettings, KVLayout

    settings = ExecutionSettings(chunk_size=64, heads_per_group=2, resident_kv_heads=0, capacity_tokens=4096)
    layout = KVLayout.build(num_layers=2, kv_heads=4, query_heads=8, head_dim=64, settings=settings)
    for kind in ("huge", "base"):
        monkeypatch.setenv(host_pages.ENV, kind)
        with HostKVStore(layout, torch.float32, pin=False) as store:
            assert store.touch_s >= 0 and store.huge_page_bytes >= 0
            if kind == "base":
                assert store.huge_page_bytes == 0 or thp_mode() == "always"
            store.keys[1][2, 100].fill_(3.5)   # the store is not zeroed (only touched): write both rows read
            store.values[1][2, 100].fill_(-1.25)
            assert float(store.keys[1][2, 100, 7]) == 3.5 and float(store.values[1][2, 100, 7]) == -1.25


def test_stack_limit_is_unknown_without_a_cuda_runtime():
    """On a machine whose torch loaded no libcudart the limit reads None and releasing changes nothing."""
    from executor.runtime import gpu_memory

    if gpu_memory._cudart() is not None:
        pytest.skip("a CUDA runtime is loaded here")
    assert gpu_memory.cuda_stack_limit_bytes() is None
    assert gpu_memory.release_grown_stack(torch.device("cpu"), None) is None


def test_cpu_run_records_no_gpu_phases():
    from transformers import LlamaConfig, LlamaForCausalLM

    from executor.generation.runner import execute
    from executor.settings import ExecutionSettings

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 100, (1, 12))
    settings = ExecutionSettings(chunk_size=4, heads_per_group=1, resident_kv_heads=1, capacity_tokens=16,
                                 attention_backend="math")
    measurement = execute(model, ids, settings, new_tokens=2, device="cpu")
    assert measurement.gpu_outside_allocator_by_phase == {} and measurement.stack_released_bytes_per_thread == {}
    assert measurement.host_touch_s >= 0.0 and measurement.host_huge_page_bytes >= 0
    steal = measurement.decode_cpu_steal                 # Linux: /proc/stat is read at the phase boundaries
    if read_cpu_ticks() is not None and steal is not None:
        assert 0.0 <= steal.fraction <= steal.busiest_cpu_fraction + 1e-12 <= 1.0 + 1e-12


PROC_STAT_BEFORE = """cpu  100 0 50 800 10 0 5 35 7 0
cpu0 50 0 25 400 5 0 5 15 7 0
cpu1 50 0 25 400 5 0 0 20 0 0
intr 12345 0 0
ctxt 999
"""
PROC_STAT_AFTER = """cpu  160 0 70 900 10 0 5 55 9 0
cpu0 90 0 35 440 5 0 5 25 9 0
cpu1 70 0 35 460 5 0 0 30 0 0
intr 12399 0 0
"""


def test_cpu_steal_is_the_steal_ticks_over_all_ticks_and_the_busiest_cpu():
    """runtime/cpu_steal.py on two /proc/stat texts: the aggregate line gives 20 steal ticks of 200 (guest time is
    inside user and not counted twice); cpu0 10 of 100 and cpu1 10 of 100."""
    before, after = parse_cpu_ticks(PROC_STAT_BEFORE), parse_cpu_ticks(PROC_STAT_AFTER)
    assert (before.steal, before.total, before.per_cpu) == (35, 1000, ((15, 500), (20, 500)))
    figures = steal_between(before, after)
    assert figures.fraction == pytest.approx(20 / 200) and figures.busiest_cpu_fraction == pytest.approx(0.1)
    uneven = parse_cpu_ticks(PROC_STAT_AFTER.replace("cpu1 70 0 35 460 5 0 0 30", "cpu1 70 0 35 440 5 0 0 50"))
    assert steal_between(before, uneven).busiest_cpu_fraction == pytest.approx(30 / 100)
    assert steal_between(before, before) is None and steal_between(None, after) is None
    assert parse_cpu_ticks("cpu  1 2 3 4\n") is None                     # no steal field: a kernel before 2.6.11
    assert parse_cpu_ticks("intr 1 2\n") is None


def test_read_cpu_ticks_of_a_missing_file_is_none(tmp_path):
    assert read_cpu_ticks(tmp_path / "stat") is None
    (tmp_path / "stat").write_text(PROC_STAT_BEFORE)
    assert read_cpu_ticks(tmp_path / "stat").steal == 35
