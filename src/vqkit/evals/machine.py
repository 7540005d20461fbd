"""The CPU behind a measurement, for the headers of evaluation and benchmark reports."""

from __future__ import annotations

import platform
from typing import Any

import torch


def cpu_model(fallback: str = "unknown") -> str:
    """Return the CPU's "model name" from /proc/cpuinfo, else platform.processor(), else `fallback`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or fallback


def describe_machine(device: torch.device) -> dict[str, Any]:
    """Return the device, CPU model, thread count and versions behind a run."""
    import datetime

    import vqkit

    return {
        "device": str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})",
        "cpu_model": cpu_model(fallback="unknown CPU"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "vqkit": vqkit.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
