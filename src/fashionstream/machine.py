"""What machine a measurement ran on: one description for every benchmark and training run summary.

Numbers from a 2-core VM and from a 16-core workstation are not comparable; every result file
says which machine produced it, in the same words. Standard library only (torch-free).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def int8_instructions() -> list[str]:
    """The CPU's 8-bit dot-product instructions that ONNX Runtime's int8 kernels use, from /proc/cpuinfo (Linux).

    They decide more than speed: without VNNI, ONNX Runtime's uint8×int8 kernels can saturate 16-bit
    intermediate sums, so an int8 model's answers (and its test accuracy) differ slightly by CPU.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in ("avx512_vnni", "avx_vnni", "amx_int8") if flag in flags]


def describe_machine(*packages: str) -> dict[str, Any]:
    """Host, CPU, core count, OS, Python, the load when asked, and the installed versions of `packages`."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # A benchmark taken while something else ran is worth less: say how busy the machine was.
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    for package in packages:
        # A module already imported knows the build that ran (torch says "2.15.0+cu132", its
        # distribution only "2.15.0"); otherwise the installed distribution's version.
        running = getattr(sys.modules.get(package.replace("-", "_")), "__version__", None)
        if isinstance(running, str):
            info[package] = running
            continue
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    return info
