"""NUMA placement of a host KV store: its pages on the memory node nearest the GPU that reads them.

On a machine with more than one NUMA node, a GPU's PCIe link is attached to one socket; copies from pages on
the other socket cross the inter-socket link. The host store of a GPU's layers is therefore given the memory
policy MPOL_PREFERRED for that GPU's node (``mbind`` on the allocation, before its pages are first touched),
so whichever thread faults the pages in, they land on the GPU's node.

    gpu_numa_node(device)      node of the GPU's PCIe device (sysfs), None where unknown
    prefer_node(tensor, node)  mbind(tensor's whole pages, MPOL_PREFERRED, {node}); True when applied
    numa_node_count()          nodes the kernel reports (1 where sysfs has none)

Linux only; everywhere else these report "unknown" and change nothing. Leaves out: binding threads, moving
pages already touched (the store is bound before it is touched), interleaving.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

from executor.runtime.host_pages import aligned_interior

SYSFS_NODES = Path("/sys/devices/system/node")
SYSFS_PCI = Path("/sys/bus/pci/devices")
MPOL_PREFERRED = 1
SYS_MBIND_X86_64 = 237
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def numa_node_count(nodes_dir: Path = SYSFS_NODES) -> int:
    """Memory nodes the kernel reports (node0, node1, ...); 1 where the folder is missing."""
    try:
        return max(1, sum(1 for p in nodes_dir.iterdir() if p.name.startswith("node") and p.name[4:].isdigit()))
    except OSError:
        return 1


def pci_address(domain: int, bus: int, device: int) -> str:
    """sysfs name of a PCI function 0: 'dddd:bb:dd.0' in hex."""
    return f"{domain:04x}:{bus:02x}:{device:02x}.0"


def node_of_pci(address: str, pci_dir: Path = SYSFS_PCI) -> Optional[int]:
    """/sys/bus/pci/devices/<address>/numa_node, None where missing or -1 (no affinity reported)."""
    try:
        node = int((pci_dir / address / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def gpu_numa_node(device) -> Optional[int]:
    """NUMA node of a CUDA device (its PCI address from torch's device properties), None where unknown."""
    import torch

    try:
        props = torch.cuda.get_device_properties(device)
        address = pci_address(props.pci_domain_id, props.pci_bus_id, props.pci_device_id)
    except (AttributeError, RuntimeError, AssertionError):
        return None
    return node_of_pci(address)


def prefer_node(tensor, node: int) -> bool:
    """Give the tensor's whole pages the policy MPOL_PREFERRED {node} (x86-64 Linux mbind). Call before the
    pages are first touched. Returns True when the kernel accepted it; False (nothing changed) elsewhere."""
    if os.uname().machine != "x86_64" or node < 0 or node >= 64:
        return False
    first, length = aligned_interior(tensor.data_ptr(), tensor.numel() * tensor.element_size(), PAGE_BYTES)
    if length == 0:  # whole pages only
        return False
    mask = ctypes.c_ulong(1 << node)
    libc = ctypes.CDLL(None, use_errno=True)
    code = libc.syscall(ctypes.c_long(SYS_MBIND_X86_64), ctypes.c_void_p(first), ctypes.c_ulong(length),
                        ctypes.c_int(MPOL_PREFERRED), ctypes.byref(mask), ctypes.c_ulong(64), ctypes.c_uint(0))
    return code == 0
