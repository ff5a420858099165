"""The install is what the README says: the CPU wheel of the pinned torch on a CPU machine."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import torch

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def test_a_cpu_install_keeps_the_pinned_cpu_wheel():
    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the CUDA build is expected here (README: GPU install)")
    pinned = re.search(r"^TORCH_VERSION \?= (\S+)$", MAKEFILE.read_text(), re.M).group(1)
    assert torch.__version__.split("+")[0] == pinned, f"torch {torch.__version__} installed, the Makefile pins {pinned}"
    assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build on a machine without a GPU"
    cuda_stack = sorted(d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"].startswith("nvidia-"))
    assert cuda_stack == [], f"the CUDA stack came along: {cuda_stack[:3]}"
