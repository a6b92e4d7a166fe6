"""What this machine's CPU can do for reduced precisions, read from /proc/cpuinfo (no runtime is loaded).

int8 is only faster than f32 where the CPU multiplies-adds int8 into 32 bits in one instruction (VNNI, AMX):
without it (AVX2 alone) int8 kernels go through 16-bit sums and run no faster. bf16 needs AVX512-BF16 or AMX.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The first CPU's feature flags; None where the file does not say (not Linux, or no flags line)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), None)
    return None if flags is None else frozenset(flags)


def cpu_has_vnni(cpuinfo: Path = CPUINFO) -> bool | None:
    """Whether the CPU has an int8 dot-product instruction (VNNI, AMX); None where /proc/cpuinfo does not say."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(VNNI_FLAGS & flags)


def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool | None:
    """Whether the CPU computes in bf16 (AVX512-BF16, AMX); None where /proc/cpuinfo does not say."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(BF16_FLAGS & flags)
