"""What asft knows per architecture: which modules the paper's "attention query and value"
are, how a fused q/k/v weight is laid out, and which weights are stored transposed.

- **Target presets** (``PRESETS``, by ``model_type``): used when the user names no targets.
  Llama-like models keep q and v apart (``q_proj``, ``v_proj``); Phi-3, GPT-NeoX, Falcon,
  Bloom, GPT-2 ... fuse q, k and v into one weight, which is then the target.
- **Fused q/k/v rows** (``QkvLayout``): the output rows of a fused weight, in nn.Linear's
  (out, in) layout, are ``groups`` repeats of [q rows | k rows | v rows]; the head counts in
  config.json give the sizes (Phi-3 is one group [q|k|v]; GPT-NeoX and Bloom interleave per
  head; Falcon depends on new_decoder_architecture / multi_query).
- **One orientation**: every V, every LoRA update B A and every axis of the landscape is in
  nn.Linear's (out, in) layout. transformers' ``Conv1D`` (GPT-2 family) stores its weight as
  (in, out); the direction step transposes those modules' V and lists them in its manifest
  (``transposed_modules``). Which modules are Conv1D is read off the model skeleton built on
  the meta device from config.json (no weights loaded, no remote code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from asft.errors import AsftError, first_line

TARGETS_HINT = "--target-modules (suffixes such as q_proj,v_proj) or --target-regex"


def module_matches(name: str, targets: Iterable[str], regex: str | None = None) -> bool:
    """peft's rule: a full-match regex, or a name equal to / ending in ``.<target>``."""
    if regex is not None:
        return re.fullmatch(regex, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def check_target_fields(modules: list[str] | None, regex: str | None) -> None:
    """The config rule for targets (a ValueError for pydantic): no empty names, a valid regex.
    A regex replaces the module names; neither means the model type's preset."""
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as exc:
            raise ValueError(f"target_regex {regex!r} is not a valid regular expression: {exc}") from None
    elif modules is not None and not all(t.strip() for t in modules or [""]):
        raise ValueError("target_modules is empty; give module names such as q_proj,v_proj, "
                         "or leave it unset for the model type's preset")


@dataclass(frozen=True)
class QkvLayout:
    """Rows of a fused q/k/v weight in (out, in) layout: ``groups`` x [q rows | k rows | v rows]."""

    groups: int
    q: int
    k: int
    v: int

    @property
    def rows_total(self) -> int:
        return self.groups * (self.q + self.k + self.v)

    def rows(self, block: str) -> torch.Tensor:
        """The row indices of block ``q``, ``k`` or ``v``."""
        offset = {"q": 0, "k": self.q, "v": self.q + self.k}[block]
        size = getattr(self, block)
        starts = torch.arange(self.groups) * (self.q + self.k + self.v) + offset
        return (starts[:, None] + torch.arange(size)[None, :]).reshape(-1)

    def record(self) -> dict:
        return {"groups": self.groups, "q": self.q, "k": self.k, "v": self.v}


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _contiguous(config) -> QkvLayout:  # [q | k | v], one block each (GPT-2 c_attn, MPT Wqkv)
    return QkvLayout(1, config.hidden_size, config.hidden_size, config.hidden_size)


def _per_head(config) -> QkvLayout:  # (heads, 3, head_dim): GPT-NeoX, Bloom, Persimmon
    d = _head_dim(config)
    return QkvLayout(config.num_attention_heads, d, d, d)


def _phi3(config) -> QkvLayout:
    d = _head_dim(config)
    return QkvLayout(1, config.num_attention_heads * d, config.num_key_value_heads * d, config.num_key_value_heads * d)


def _falcon(config) -> QkvLayout:
    d, heads = _head_dim(config), config.num_attention_heads
    if config.new_decoder_architecture:  # per kv group: its query heads, then one k and one v head
        return QkvLayout(config.num_kv_heads, heads // config.num_kv_heads * d, d, d)
    if config.multi_query:
        return QkvLayout(1, heads * d, d, d)
    return _per_head(config)


def _gpt_bigcode(config) -> QkvLayout:
    d = _head_dim(config)
    return QkvLayout(1, config.hidden_size, d, d) if config.multi_query else _per_head(config)


@dataclass(frozen=True)
class Preset:
    """The paper's targets for one model type; ``qkv`` gives the fused target's row layout."""

    targets: tuple[str, ...]
    qkv: Callable[[object], QkvLayout] | None = None


_SEPARATE_QV = Preset(("q_proj", "v_proj"))
PRESETS: dict[str, Preset] = {
    **{t: _SEPARATE_QV for t in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
                                 "gemma2", "gemma3_text", "opt", "gptj", "gpt_neo", "phi", "stablelm", "starcoder2",
                                 "olmo", "olmo2", "cohere", "granite")},
    "phi3": Preset(("qkv_proj",), _phi3),
    "gpt_neox": Preset(("query_key_value",), _per_head),
    "bloom": Preset(("query_key_value",), _per_head),
    "persimmon": Preset(("query_key_value",), _per_head),
    "falcon": Preset(("query_key_value",), _falcon),
    "gpt2": Preset(("c_attn",), _contiguous),
    "gpt_bigcode": Preset(("c_attn",), _gpt_bigcode),
    "mpt": Preset(("Wqkv",), _contiguous),
    "codegen": Preset(("qkv_proj",)),  # fused in a sharded order of its own: the whole matrix only
}


def linear_suffixes(names: Iterable[str]) -> list[str]:
    """The last name component of the per-layer matrices (those under a numbered block), in order."""
    names = list(names)
    layered = [n for n in names if any(part.isdigit() for part in n.split("."))] or names
    return list(dict.fromkeys(n.split(".")[-1] for n in layered))


@dataclass(frozen=True)
class Targets:
    """The modules a run targets: suffixes (given or from the model type's preset) or a regex."""

    modules: tuple[str, ...] | None
    regex: str | None
    preset: str | None  # the model_type whose preset chose ``modules``; None when the user chose

    def matches(self, name: str) -> bool:
        return module_matches(name, self.modules or (), self.regex)

    def describe(self, what: str = "target modules") -> str:
        if self.regex is not None:
            return f"{what} regex {self.regex!r}"
        return f"{what} {','.join(self.modules)}" + (f" (the {self.preset} preset)" if self.preset else "")

    def for_peft(self) -> list[str] | str:
        """peft's ``target_modules``: a string is a full-match regex there, as here."""
        return self.regex if self.regex is not None else list(self.modules)

    def record(self) -> dict:
        return {"target_preset": self.preset, "target_modules": None if self.modules is None else list(self.modules),
                "target_regex": self.regex}


def choose_targets(model_type: str | None, modules: list[str] | None, regex: str | None) -> Targets | None:
    """The regex, else the given names, else the model type's preset (None when it has none)."""
    if regex is not None:
        return Targets(None, regex, None)
    if modules:
        return Targets(tuple(modules), None, None)
    preset = PRESETS.get(model_type)
    return None if preset is None else Targets(preset.targets, None, model_type)


def resolve_targets(model_type: str | None, modules: list[str] | None, regex: str | None,
                    weights: dict[str, int], where: str, what: str = "target modules") -> Targets:
    """The targets of a run on a model with these weight modules (name -> number of dimensions);
    an error naming the model's own matrices when no preset applies or nothing matches
    (``what`` names the targets in it: target modules, LoRA targets)."""
    own = f"this {model_type} model's linear modules: {', '.join(linear_suffixes(n for n, d in weights.items() if d == 2))}"
    targets = choose_targets(model_type, modules, regex)
    if targets is None:
        raise AsftError(f"{where}: asft has no target preset for model type {model_type!r}; {own}; pass {TARGETS_HINT}")
    if not any(targets.matches(name) for name in weights):
        preset = PRESETS.get(model_type)
        hint = f"--target-modules {','.join(preset.targets)}" if preset else TARGETS_HINT
        raise AsftError(f"{targets.describe(what)} match no weight in {where}; {own}; pass {hint}")
    return targets


def checkpoint_weights(folder: Path, what: str) -> dict[str, int]:
    """Module name -> dimensions of its ``.weight``, from the safetensors headers alone."""
    from asft.io.safetensors import safetensors_header, tensor_files

    headers = {path: safetensors_header(path) for path in set(tensor_files(folder, what).values())}
    return {key[: -len(".weight")]: len(t.shape) for header in headers.values() for key, t in header.items()
            if key.endswith(".weight")}


def is_transposed(module: torch.nn.Module) -> bool:
    """Whether a module stores its weight as (in, out): transformers' Conv1D (GPT-2 family)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


@dataclass(frozen=True)
class CheckpointLayout:
    """How a checkpoint's target weights relate to nn.Linear's (out, in) layout."""

    model_type: str | None
    transposed: frozenset[str]  # modules stored (in, out)
    source: str  # how ``transposed`` was found
    qkv: dict[str, QkvLayout]  # fused target suffix -> its rows

    def record(self) -> dict:
        return {"weight_layout": "out_in", "transposed_modules": sorted(self.transposed), "layout_source": self.source,
                "fused_qkv": {suffix: layout.record() for suffix, layout in self.qkv.items()}}


def checkpoint_layout(folder: Path, modules: list[str]) -> CheckpointLayout:
    """Which of ``modules`` are stored transposed (from the model skeleton on the meta device) and
    the row layout of the fused q/k/v ones (from the preset and config.json); no weight is read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:  # a model type transformers does not know
        return CheckpointLayout(model_type(folder), frozenset(), f"assumed nn.Linear: no skeleton ({first_line(exc)})", {})
    conv = [name for name, module in skeleton.named_modules() if is_transposed(module)]
    # a checkpoint saved from the bare model lacks the LM head's prefix (h.0.attn.c_attn)
    transposed = frozenset(m for m in modules if any(c == m or c.endswith("." + m) for c in conv))
    preset = PRESETS.get(config.model_type)
    qkv = {}
    if preset is not None and preset.qkv is not None:
        suffix = preset.targets[0]
        if any(m.split(".")[-1] == suffix for m in modules):
            qkv[suffix] = preset.qkv(config)
    return CheckpointLayout(config.model_type, transposed, "model skeleton (meta device)", qkv)


def model_type(folder: Path) -> str | None:
    """``model_type`` from a checkpoint folder's config.json."""
    return json.loads((folder / "config.json").read_text()).get("model_type")
