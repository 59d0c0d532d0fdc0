"""Training precision: fp32, or bf16 autocast of the forward (weights, adapters, gradients
and optimizer state stay fp32).

bf16 pays on CPUs that compute in it natively (AVX-512 BF16 or AMX); elsewhere PyTorch
converts to and from fp32 around every matrix product, and a step is slower than in fp32
(``lrlora bench-speed --fast-path`` measures both on the machine at hand). ``auto``, the
default of ``lrlora train``, therefore picks bf16 only on a CPU whose flags say it has the
instructions, and fp32 everywhere else (GPUs included, whose precision is left as it was).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of x86 CPUs that multiply bf16 matrices natively."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (empty where the kernel does not list them)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    return any(flag in (cpu_flags() if flags is None else flags) for flag in NATIVE_BF16_FLAGS)


def check_precision(choice: str) -> None:
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {choice!r}.")


def resolve_precision(choice: str, device: str, flags: set[str] | None = None) -> str:
    """'fp32' or 'bf16' for ``choice`` (one of :data:`PRECISIONS`) on ``device``."""
    check_precision(choice)
    if choice != "auto":
        return choice
    return "bf16" if device == "cpu" and cpu_has_native_bf16(flags) else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: str) -> Iterator[None]:
    """bf16 autocast of what runs inside on ``device`` when ``precision`` is 'bf16'."""
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
