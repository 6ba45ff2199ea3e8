"""Which int8 kernels onnxruntime runs on this CPU (recorded with every int8 variant and benchmark).

onnxruntime's MLAS library picks its quantized GEMM kernel at start-up from the CPU's instruction sets:
AMX tiles (``amx_int8``), AVX-512 VNNI (``avx512_vnni``), AVX-VNNI (``avx_vnni``), AVX-512BW, then AVX2; on
ARM the dot-product extension (``asimddp``/``dotprod``) or plain NEON. Without VNNI or AMX, x86 runs u8·s8
products through ``vpmaddubsw``, which can saturate and is why int8 often pays little there; with VNNI the
same weights run through ``vpdpbusd`` (no saturation, about twice the throughput). onnxruntime has no API that
reports the path it took, so it is read here from the same CPU flags (``/proc/cpuinfo`` on Linux,
``sysctl`` on macOS).
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path

# flag → the MLAS int8 kernel family it enables, fastest first
_PATHS: tuple[tuple[str, str], ...] = (
    ("amx_int8", "amx"),
    ("avx512_vnni", "avx512-vnni"),
    ("avx_vnni", "avx-vnni"),
    ("avx512bw", "avx512bw"),
    ("avx2", "avx2"),
    ("asimddp", "arm-dotprod"),
    ("dotprod", "arm-dotprod"),
    ("asimd", "arm-neon"),
    ("neon", "arm-neon"),
)
VNNI_PATHS = frozenset({"amx", "avx512-vnni", "avx-vnni", "arm-dotprod"})


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, lower case (empty when they cannot be read)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.lower().split())
        return frozenset()
    if platform.system() == "Darwin":  # pragma: no cover - not on the CI machines
        try:
            out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return frozenset()
        flags = {line.split(":")[0].rsplit(".", 1)[-1].lower() for line in out.splitlines() if line.endswith(": 1")}
        return frozenset(flags | ({"asimd", "dotprod"} if platform.machine() == "arm64" else set()))
    return frozenset()  # pragma: no cover


def int8_kernel_path(flags: frozenset[str] | None = None) -> str:
    """The int8 GEMM kernel family onnxruntime dispatches to here: ``amx``, ``avx512-vnni``, ``avx-vnni``,
    ``avx512bw``, ``avx2``, ``arm-dotprod``, ``arm-neon`` or ``generic``."""
    flags = cpu_flags() if flags is None else flags
    return next((path for flag, path in _PATHS if flag in flags), "generic")


def cpu_summary() -> dict[str, object]:
    """What ``variant.json`` and the benchmarks record about the CPU the int8 choice was made on."""
    path = int8_kernel_path()
    return {
        "machine": platform.machine(),
        "processor": _model_name(),
        "int8_kernels": path,
        "vnni": path in VNNI_PATHS,
    }


def _model_name() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or None
