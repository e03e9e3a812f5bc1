"""Small hand-made hardware profiles for the planner's unit tests."""

from hwprofiles.schema import AttentionPoint, HardwareProfile, PinningPoint, TransferPoint
from planner.units import GIB

T, G = 1e12, 1e9


def scalar_profile(**overrides) -> HardwareProfile:
    """A datasheet-like profile with no tables: every rate is a scalar."""
    fields = dict(name="test-gpu", origin="datasheet", source="unit test", gpu_name="Test GPU",
                  gpu_mem_bytes=24 * GIB, matmul_peak_flops_per_s=200 * T, matmul_flops_per_s=160 * T,
                  attention_flops_per_s=100 * T, hbm_peak_bytes_per_s=1 * T, hbm_bytes_per_s=0.9 * T,
                  pcie_generation=4, pcie_h2d_bytes_per_s=25 * G, pcie_d2h_bytes_per_s=25 * G,
                  pcie_bidir_total_bytes_per_s=40 * G, host_mem_bytes=100 * GIB, pin_bytes_per_s=4 * G,
                  runtime_overhead_bytes=GIB, launch_overhead_s=10e-6)
    fields.update(overrides)
    return HardwareProfile(**fields)


def table_profile(cudnn_tflops: float | None = 600.0, **overrides) -> HardwareProfile:
    """A measured-like profile: flash (and optionally cuDNN) attention points, transfers by size, pinning."""
    points = []
    for q_heads in (4, 32):
        for k_len, flash in ((131072, 200.0), (524288, 300.0)):
            points.append(AttentionPoint(backend="flash", head_dim=128, q_heads=q_heads, kv_heads=q_heads // 4,
                                         q_len=8192, k_len=k_len, causal=True, flops_per_s=flash * T))
            if cudnn_tflops is not None:
                points.append(AttentionPoint(backend="cudnn", head_dim=128, q_heads=q_heads, kv_heads=q_heads // 4,
                                             q_len=8192, k_len=k_len, causal=False, flops_per_s=cudnn_tflops * T))
    transfers = [TransferPoint(direction=d, host_memory="pinned", size_bytes=s, bytes_per_s=bw * G)
                 for d in ("h2d", "d2h") for s, bw in ((1 << 20, 20.0), (1 << 30, 50.0))]
    fields = dict(origin="measured", name="test-measured", attention_table=points, transfer_table=transfers,
                  pinning_table=[PinningPoint(method="cuda_host_register", size_bytes=16 * GIB, seconds=4.0)],
                  cudnn_graph_build_s=0.05, gpu_mem_bytes=80 * GIB, matmul_flops_per_s=700 * T,
                  hbm_bytes_per_s=3 * T, pcie_h2d_bytes_per_s=50 * G, pcie_d2h_bytes_per_s=50 * G,
                  pcie_bidir_total_bytes_per_s=80 * G)
    fields.update(overrides)
    return scalar_profile(**fields)
