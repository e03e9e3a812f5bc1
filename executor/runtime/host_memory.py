"""Host RAM as the kernel reports it (MemAvailable), for the checks made before the host store is allocated."""

from __future__ import annotations

from typing import Optional


def host_available_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (bytes), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None

