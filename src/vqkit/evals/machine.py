"""The CPU behind a measurement, for the headers of evaluation and benchmark reports."""

from __future__ import annotations

import platform


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
