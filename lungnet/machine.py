"""What machine a run or benchmark ran on, so its wall times can be compared across machines.

Two machines with the same core count can differ twofold in training speed (the README's real-CT runs met
both), so a wall time means little without the processor beside it. Nothing here imports a deep-learning
framework: the GPU benchmark runs this on a machine without TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# the instruction sets that decide CPU convolution speed (oneDNN picks its kernels by them)
VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def _cpuinfo_field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_model(cpuinfo: Path = CPUINFO) -> tuple[str, tuple[str, ...]]:
    """(the processor's model name, its vector extensions among `VECTOR_EXTENSIONS`), from /proc/cpuinfo on
    Linux; elsewhere `platform.processor()` and no extensions."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), ()
    name = _cpuinfo_field(text, "model name") or platform.processor() or platform.machine()
    flags = set(_cpuinfo_field(text, "flags").split())
    return name, tuple(f for f in VECTOR_EXTENSIONS if f in flags)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, which containers narrow), else all the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_line(name: str, cpus: int, extensions) -> str:
    """``"AMD EPYC, 2 cores (avx2, fma)"``."""
    listed = f" ({', '.join(extensions)})" if extensions else ""
    return f"{name}, {cpus} cores{listed}"


def cpu_description() -> str:
    """This machine's CPU in one line, for benchmark JSON: ``"CPU: AMD EPYC, 2 cores (avx2, fma)"``."""
    name, extensions = cpu_model()
    return "CPU: " + cpu_line(name, usable_cpus(), extensions)


def machine_record() -> dict:
    """The machine for ``run.json``: processor, cores, extensions, load at the start, library versions."""
    name, extensions = cpu_model()
    record = {
        "cpu": name,
        "cpus": usable_cpus(),
        "vector_extensions": list(extensions),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):  # no load average on Windows
        record["load_average_1min"] = round(os.getloadavg()[0], 2)  # another job sharing the CPU shows here
    for module in ("tensorflow", "keras", "jax", "torch"):  # only those this process already imported
        if module in sys.modules:
            record[module] = getattr(sys.modules[module], "__version__", "unknown")
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            record["gpus"] = [
                tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
            ]
    return record
