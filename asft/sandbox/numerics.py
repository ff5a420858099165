"""The CPU kernels a sandbox is computed with, pinned so that every x86-64 machine builds the
same world.

The sandbox's worlds are chaotic in their floating point: the default world built with
torch's AVX-512 kernels and with its AVX2 kernels are two different worlds (measured: the
same code and seed gave a base whose sentiment skill was never learnt under AVX-512, so SFT
reached 49 % on sst2 against 86.5 % under AVX2). The default world was calibrated under AVX2,
which every x86-64 CPU of the last decade has, so the build asks for those kernels.

torch picks its CPU kernels at the process's first computation, so the pin only takes effect
when it comes before any; the manifest records the kernels actually used, and the build says
when they are not the calibrated ones.
"""

from __future__ import annotations

import os

CALIBRATED_CPU_KERNELS = "AVX2"
# torch's vectorised ATen kernels, MKL's BLAS (conditional numerical reproducibility) and
# oneDNN's: each picks its code path from the CPU unless told.
PIN = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_cpu_kernels() -> None:
    """Ask for the calibrated CPU kernels for the rest of this process and its children
    (a value the user set is kept)."""
    for name, value in PIN.items():
        os.environ.setdefault(name, value)


def numerics(device) -> dict:
    """What the world's floating point depends on besides the code: torch's version and the
    kernels (CPU instruction set, or the GPU)."""
    import torch

    if device.type == "cuda":
        return {"torch": torch.__version__, "device": "cuda", "gpu": torch.cuda.get_device_name(device)}
    return {"torch": torch.__version__, "device": device.type, "cpu_kernels": torch.backends.cpu.get_cpu_capability()}
