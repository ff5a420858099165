"""Safe LoRA on hand-made adapters: cosines against a naive reference, both selection modes,
the number-mode threshold taken from the unmodified adapter, and the --adapter path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from asft.regularizer import DirectionAnchor
from asft.training.safelora import cosine, project

P = "base_model.model."


def naive_cos(A, B, V):
    C = V @ V.T / torch.linalg.matrix_norm(V)
    return torch.nn.functional.cosine_similarity((C @ B @ A).flatten(), (B @ A).flatten(), dim=0).item()


def anchor(V):
    V = V.double()
    return DirectionAnchor(V, torch.linalg.matrix_norm(V))


def hand_made(n_modules=4, out=12, inp=10, r=3, seed=0):
    """Adapter + direction (V of rank 2) where module i's B mixes the top singular vector of V
    with noise in proportion i, so the cosines spread from near 1 downwards."""
    g = torch.Generator().manual_seed(seed)
    state, vectors = {}, {}
    for i in range(n_modules):
        name = f"model.layers.{i}.self_attn.q_proj"
        V = torch.randn(out, 2, generator=g, dtype=torch.float64) @ torch.randn(2, inp, generator=g, dtype=torch.float64)
        u = torch.linalg.svd(V)[0][:, :1]
        B = u @ torch.randn(1, r, generator=g, dtype=torch.float64) + 0.6 * i * torch.randn(out, r, generator=g, dtype=torch.float64)
        state[f"{P}{name}.lora_A.weight"] = torch.randn(r, inp, generator=g, dtype=torch.float64).float()
        state[f"{P}{name}.lora_B.weight"] = B.float()
        vectors[name] = V.float()
    return state, vectors


def test_cosine_matches_the_naive_formula():
    state, vectors = hand_made()
    for name, V in vectors.items():
        A, B = state[f"{P}{name}.lora_A.weight"].double(), state[f"{P}{name}.lora_B.weight"].double()
        assert cosine(A, B, anchor(V)) == pytest.approx(naive_cos(A, B, V.double()), rel=1e-9)
    assert cosine(A, torch.zeros_like(B), anchor(V)) == 1.0  # a zero update has nothing to pull back


def test_threshold_mode_projects_exactly_the_low_cosine_modules():
    state, vectors = hand_made()
    new, report = project(state, vectors, mode="threshold", tau=0.5)
    cosines = report["cosines"]
    assert sorted(cosines.values())[0] < 0.5 < max(cosines.values())  # the fixture spans the threshold
    assert report["projected"] == sorted(n for n, s in cosines.items() if s <= 0.5)
    for name, V in vectors.items():
        b_key = f"{P}{name}.lora_B.weight"
        assert torch.equal(new[f"{P}{name}.lora_A.weight"], state[f"{P}{name}.lora_A.weight"])
        if name in report["projected"]:
            C = V.double() @ V.double().T / torch.linalg.matrix_norm(V.double())
            torch.testing.assert_close(new[b_key], (C @ state[b_key].double()).float(), rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(new[b_key], state[b_key])


def test_number_mode_uses_the_kth_smallest_cosine_of_the_unmodified_adapter():
    state, vectors = hand_made(n_modules=6, seed=1)
    original = {name: cosine(state[f"{P}{name}.lora_A.weight"], state[f"{P}{name}.lora_B.weight"], anchor(V))
                for name, V in vectors.items()}
    _, report = project(state, vectors, mode="number", k=2)
    lowest = sorted(original, key=original.get)[:2]
    assert report["cosines"] == original
    assert report["threshold"] == sorted(original.values())[1]
    assert report["projected"] == sorted(lowest)
    _, everything = project(state, vectors, mode="number", k=10)  # K above the module count: all
    assert len(everything["projected"]) == 6


def test_safelora_projects_an_existing_adapter_folder(tmp_path, llama_pair, train_rows):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from asft.direction import DirectionConfig, extract_direction, load_direction
    from asft.training import TrainConfig, train

    aligned, base = llama_pair
    extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(tmp_path / "d")))
    sft = train(TrainConfig(model=str(aligned), data=str(train_rows), out=str(tmp_path / "sft"), method="sft",
                            preset="sandbox", batch_size=8, device="cpu"))
    summary = train(TrainConfig(model=str(aligned), out=str(tmp_path / "safe"), method="safelora",
                                adapter=sft["adapter"], direction=str(tmp_path / "d"), safelora_mode="number",
                                safelora_k=1))
    assert summary["safelora_projected"] == 1
    before, after = load_file(tmp_path / "sft" / "adapter_model.safetensors"), load_file(tmp_path / "safe" / "adapter_model.safetensors")
    manifest = json.loads((tmp_path / "safe" / "train_manifest.json").read_text())
    (name,) = manifest["safelora"]["projected"]
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [f"{P}{name}.lora_B.weight"]
    expected, _ = project(before, load_direction(tmp_path / "d").vectors, mode="number", k=1)
    assert torch.equal(after[changed[0]], expected[changed[0]])
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(aligned), tmp_path / "safe")
    # training with method safelora = the same SFT run, then the same projection
    trained = train(TrainConfig(model=str(aligned), data=str(train_rows), out=str(tmp_path / "trained"),
                                method="safelora", direction=str(tmp_path / "d"), preset="sandbox", batch_size=8,
                                device="cpu", safelora_mode="number", safelora_k=1))
    assert trained["safelora_projected"] == 1
    again = load_file(tmp_path / "trained" / "adapter_model.safetensors")
    assert all(torch.equal(again[k], after[k]) for k in after)
    save_file({"x": torch.zeros(1)}, tmp_path / "sft" / "adapter_model.safetensors")
    from asft.errors import AsftError

    with pytest.raises(AsftError, match="no lora_A"):
        train(TrainConfig(model=str(aligned), out=str(tmp_path / "bad"), method="safelora",
                          adapter=sft["adapter"], direction=str(tmp_path / "d")))
