"""The sandbox safety world: a generated instruction corpus, a local tokenizer and a tiny
Llama pair (``base`` complies with everything, ``aligned`` refuses harmful requests), plus
fine-tuning mixtures and evaluation sets, so every step of asft runs on real models offline.
"""

from asft.sandbox.build import build_sandbox, write_mixture
from asft.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "build_sandbox", "write_mixture"]
