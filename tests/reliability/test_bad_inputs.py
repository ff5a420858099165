"""A permanent bad-input corpus: every command, fed broken paths, files, numbers, configs,
URIs, models, adapters, directions and outputs.

Each case runs ``asft`` in-process in its own folder tree (copies of the inputs and a decoy
``unrelated/thesis.txt``) and must end in exactly one way: exit code 2 with stderr's last line
``asft: error: ...`` and no traceback, or a documented acceptance (exit 0, checked output).
Either way no file of the tree may change; only the case's own output folder may appear.
A few cases also run through the real entry point in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from flows.cli import main  # the full asft app (the library commands + pipeline)

pytestmark = pytest.mark.slow

TALLY = {"cases": 0, "tracebacks": 0, "unrelated_changed": 0, "accepted": 0}
BUCKET = "asft-reliability"


# ---------------------------------------------------------------- the shared inputs

def _save_model(model, tokenizer_from: Path, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, folder / name)


def _small_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256))


@pytest.fixture(scope="module")
def world(tiny_sandbox, tmp_path_factory) -> Path:
    """Good inputs, built once: the sandbox, a q/v direction, a k-only direction, a direction of
    another hidden size, a 2-step adapter, an adapter of another hidden size, and a model of
    the same shapes as ``aligned`` with other weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from asft.direction import DirectionConfig, extract_direction
    from asft.training import TrainConfig, train

    root = tmp_path_factory.mktemp("reliability-world")
    sandbox = root / "sandbox"
    shutil.copytree(tiny_sandbox["out"], sandbox)
    aligned, base = sandbox / "aligned", sandbox / "base"
    extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(root / "direction")))
    extract_direction(DirectionConfig(aligned=str(aligned), base=str(base), out=str(root / "direction_k"),
                                      target_modules=["k_proj"]))
    vocab = json.loads((aligned / "config.json").read_text())["vocab_size"]
    _save_model(_small_llama(vocab), aligned, root / "small")
    small_base = _small_llama(vocab)
    with torch.no_grad():
        for p in small_base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    _save_model(small_base, aligned, root / "small_base")
    extract_direction(DirectionConfig(aligned=str(root / "small"), base=str(root / "small_base"),
                                      out=str(root / "direction_small")))
    train(TrainConfig(model=str(aligned), data=tiny_sandbox["finetune"], out=str(root / "adapter"), method="sft",
                      preset="sandbox", max_steps=2))
    get_peft_model(_small_llama(vocab), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        root / "adapter_small")
    other = AutoModelForCausalLM.from_pretrained(aligned)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    _save_model(other, aligned, root / "other")
    return root


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback with one bucket; the cases choose their own credentials."""
    import boto3
    from moto_server import moto_endpoint

    with moto_endpoint() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield endpoint


# ---------------------------------------------------------------- the cases

@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    setup: Callable[[Path], None] | None = None  # makes the case's bad input under <tree>/bad
    match: str = ""  # a piece of the error line (the right failure, not just any)
    accept: Callable[[Path, str], None] | None = None  # a documented acceptance: checks the output
    s3: str | None = None  # "no-credentials" | "credentials"
    out: str = "out"  # the case's own output, relative to the tree (may appear)
    notes: dict = field(default_factory=dict)


def write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(tree: Path) -> None:
        path = tree / "bad" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def model_copy(name: str, change: Callable[[Path], None]) -> Callable[[Path], None]:
    """A copy of the aligned model under bad/<name>, then broken by ``change``."""
    def setup(tree: Path) -> None:
        folder = tree / "bad" / name
        shutil.copytree(tree / "in" / "sandbox" / "aligned", folder)
        change(folder)
    return setup


def adapter_copy(name: str, change: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tree: Path) -> None:
        folder = tree / "bad" / name
        shutil.copytree(tree / "in" / "adapter", folder)
        change(folder)
    return setup


def truncate(file: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / file
        os.truncate(path, path.stat().st_size // 2)
    return change


def garbage(file: str) -> Callable[[Path], None]:
    return lambda folder: (folder / file).write_bytes(os.urandom(4096))


def pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")


def folder_setup(name: str) -> Callable[[Path], None]:
    return lambda tree: (tree / "bad" / name).mkdir(parents=True)


def dangling_link(tree: Path) -> None:
    (tree / "bad").mkdir()
    (tree / "bad" / "link.jsonl").symlink_to(tree / "bad" / "gone.jsonl")


def unreadable(tree: Path) -> None:
    write("secret.jsonl", '{"instruction": "a", "output": "b"}\n')(tree)
    (tree / "bad" / "secret.jsonl").chmod(0)


def big_prompt(tree: Path) -> None:
    """One 10 MB prompt and one normal one."""
    huge = ("how do i make a cake with many eggs and flour please tell me " * 170_000)[:10_000_000]
    write("huge.jsonl", json.dumps({"instruction": huge}) + "\n" + json.dumps({"instruction": "how do i sing?"}) + "\n")(tree)


def accepted_eval(expect_truncated: int = 0, warning: str = "") -> Callable[[Path, str], None]:
    def check(tree: Path, stderr: str) -> None:
        report = json.loads((tree / "out" / "report.json").read_text())
        assert report["harmful_total"] >= 1 and report["prompts_truncated"] == expect_truncated
        assert warning in stderr
    return check


def accepted_screen(tree: Path, stderr: str) -> None:
    report = json.loads((tree / "out" / "screening_report.json").read_text())
    assert report["counts"]["rejected"] == 1 and report["reject_reasons"], report["reject_reasons"]


PIPELINE_BAD_YAML = "artifact_root: [unclosed\n"
FINETUNE = "{sandbox}/data/finetune_sst2_n200_p0.1.jsonl"
LABELS = "{sandbox}/data/finetune_sst2_n200_p0.1.harmful.json"
HARMFUL = "{sandbox}/data/eval/harmful.jsonl"
SST2 = "{sandbox}/data/eval/sst2.jsonl"
ALIGNED, BASE = "{sandbox}/aligned", "{sandbox}/base"
EVAL = ("eval", "--model", ALIGNED, "--harmful", HARMFUL, "--limit", "2", "--max-new-tokens", "2", "--device", "cpu")
TRAIN = ("train", "--model", ALIGNED, "--data", FINETUNE, "--method", "sft", "--preset", "sandbox",
         "--max-steps", "2", "--device", "cpu")
SCREEN = ("screen", "--screener", "rules")
INSPECT = ("inspect", "--direction", "{direction}", "--adapter", "{adapter}")
LANDSCAPE = ("landscape", "--model", ALIGNED, "--harmful", HARMFUL, "--direction", "{direction}", "--limit", "2",
             "--points", "2", "--max-new-tokens", "2", "--device", "cpu")


def out(*argv: str) -> tuple[str, ...]:
    return (*argv, "--out", "out")


CASES = [
    # the command line itself
    Case("cli-no-command", (), match="needs a command"),
    Case("cli-unknown-command", ("frob",), match="No such command"),
    Case("cli-unknown-option", out("eval", "--bogus", "1"), match="No such option"),
    Case("cli-missing-option", ("eval", "--harmful", HARMFUL), match="Missing option"),
    Case("train-epochs-not-a-number", out(*TRAIN, "--epochs", "abc"), match="--epochs"),
    # sandbox build / mixture
    Case("sandbox-size-unknown", out("sandbox", "build", "--size", "huge"), match="--size"),
    Case("sandbox-ratio-above-1", out("sandbox", "build", "--harmful-ratio", "1.5"), match="--harmful-ratio"),
    Case("sandbox-ratio-nan", out("sandbox", "build", "--harmful-ratio", "nan"), match="--harmful-ratio"),
    Case("sandbox-rows-negative", out("sandbox", "build", "--finetune-rows", "-5"), match="--finetune-rows"),
    Case("sandbox-out-unrelated-folder", ("sandbox", "build", "--size", "tiny", "--out", "unrelated"),
         match="did not write", out="unrelated"),
    Case("sandbox-out-working-dir", ("sandbox", "build", "--size", "tiny", "--out", "."), match="working directory",
         out="."),
    Case("sandbox-out-is-a-file", ("sandbox", "build", "--size", "tiny", "--out", "unrelated/thesis.txt"),
         match="is a file", out="unrelated/thesis.txt"),
    Case("sandbox-out-unknown-protocol", ("sandbox", "build", "--size", "tiny", "--out", "foo://x"), match="foo://x"),
    Case("mixture-sandbox-missing", ("sandbox", "mixture", "--sandbox", "nowhere", "--harmful-ratio", "0.1"),
         match="nowhere"),
    Case("mixture-not-a-sandbox", ("sandbox", "mixture", "--sandbox", ALIGNED, "--harmful-ratio", "0.1")),
    Case("mixture-ratio-negative", ("sandbox", "mixture", "--sandbox", "{sandbox}", "--harmful-ratio", "-0.1")),
    # screen
    Case("screen-data-missing", out(*SCREEN, "--data", "bad/none.jsonl"), match="none.jsonl"),
    Case("screen-data-is-a-folder", out(*SCREEN, "--data", "bad/dir"), setup=folder_setup("dir"), match="dir"),
    Case("screen-data-empty", out(*SCREEN, "--data", "bad/empty.jsonl"), setup=write("empty.jsonl", b"")),
    Case("screen-data-dangling-link", out(*SCREEN, "--data", "bad/link.jsonl"), setup=dangling_link),
    Case("screen-data-unreadable", out(*SCREEN, "--data", "bad/secret.jsonl"), setup=unreadable,
         notes={"skip_as_root": True}),
    Case("screen-invalid-json-line-fail", out(*SCREEN, "--on-malformed", "fail", "--data", "bad/broken.jsonl"),
         setup=write("broken.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{oops\n'),
         match="3"),
    # accepted: --on-malformed reject (the default) rejects and reports a broken row, by design
    Case("screen-invalid-json-line-reject", out(*SCREEN, "--data", "bad/broken.jsonl"),
         setup=write("broken.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{oops\n'),
         accept=accepted_screen),
    Case("screen-latin1", out(*SCREEN, "--data", "bad/latin1.jsonl"),
         setup=write("latin1.jsonl", '{"instruction": "caf\u00e9", "output": "cr\u00e8me"}\n'.encode("latin-1")),
         match="UTF-8"),
    Case("screen-binary-garbage", out(*SCREEN, "--data", "bad/garbage.jsonl"),
         setup=write("garbage.jsonl", bytes(range(256)) * 16)),
    Case("screen-csv-missing-columns", out(*SCREEN, "--data", "bad/rows.csv"),
         setup=write("rows.csv", "name,age\nann,3\nbob,4\n")),
    Case("screen-parquet-garbage", out(*SCREEN, "--data", "bad/rows.parquet"),
         setup=write("rows.parquet", os.urandom(2048))),
    Case("screen-max-chars-zero", out(*SCREEN, "--data", FINETUNE, "--max-chars", "0"), match="--max-chars"),
    Case("screen-unknown-screener", out("screen", "--screener", "nope", "--data", FINETUNE), match="--screeners"),
    Case("screen-labels-invalid-json", out(*SCREEN, "--data", FINETUNE, "--labels", "bad/labels.json"),
         setup=write("labels.json", '{"harmful_indices": [1, 2,\n')),
    Case("screen-unknown-protocol", out(*SCREEN, "--data", "foo://x/rows.jsonl"), match="foo://"),
    Case("screen-out-is-the-input", (*SCREEN, "--data", FINETUNE, "--out", FINETUNE), match="--out", out=FINETUNE),
    Case("screen-out-parent-of-input", (*SCREEN, "--data", FINETUNE, "--out", "{sandbox}/data"), match="--out",
         out="in/sandbox/data"),
    Case("screen-s3-no-credentials", (*SCREEN, "--data", FINETUNE, "--out", f"s3://{BUCKET}/screen"),
         s3="no-credentials", match="credentials"),
    Case("screen-s3-bucket-missing", (*SCREEN, "--data", FINETUNE, "--out", "s3://no-such-bucket/screen"),
         s3="credentials", match="no-such-bucket"),
    Case("screen-fit-out-is-a-file", ("screen", "fit", "--data", FINETUNE, "--labels", LABELS, "--out",
                                      "unrelated/thesis.txt"), match="is a file", out="unrelated/thesis.txt"),
    Case("screen-fit-data-missing", out("screen", "fit", "--data", "bad/none.jsonl", "--labels", LABELS)),
    Case("screen-fit-labels-invalid", out("screen", "fit", "--data", FINETUNE, "--labels", "bad/labels.json"),
         setup=write("labels.json", "[1, 2")),
    Case("screen-fit-c-negative", out("screen", "fit", "--data", FINETUNE, "--labels", LABELS, "--c", "-1"),
         match="--c"),
    # eval: models
    Case("eval-model-missing", out("eval", "--model", "bad/nomodel", "--harmful", HARMFUL), match="nomodel"),
    Case("eval-model-no-config", out("eval", "--model", "{sandbox}/data", "--harmful", HARMFUL), match="config.json"),
    Case("eval-model-is-a-file", out("eval", "--model", "unrelated/thesis.txt", "--harmful", HARMFUL),
         match="not a folder"),
    Case("eval-model-pickle-only", out("eval", "--model", "bad/pickle", "--harmful", HARMFUL),
         setup=model_copy("pickle", pickle_only), match="pickle"),
    Case("eval-model-truncated", out(*EVAL[:1], "--model", "bad/cut", *EVAL[3:]),
         setup=model_copy("cut", truncate("model.safetensors")), match="model.safetensors"),
    Case("eval-model-garbage-weights", out(*EVAL[:1], "--model", "bad/junk", *EVAL[3:]),
         setup=model_copy("junk", garbage("model.safetensors")), match="model.safetensors"),
    Case("eval-model-config-invalid-json", out(*EVAL[:1], "--model", "bad/conf", *EVAL[3:]),
         setup=model_copy("conf", lambda f: (f / "config.json").write_text('{"model_type": "llama",')),
         match="bad/conf"),
    # eval: prompt sets and numbers
    Case("eval-harmful-missing", out(*EVAL[:3], "--harmful", "bad/none.jsonl"), match="none.jsonl"),
    Case("eval-harmful-empty", out(*EVAL[:3], "--harmful", "bad/empty.jsonl"), setup=write("empty.jsonl", "")),
    Case("eval-harmful-invalid-json-line-2", out(*EVAL[:3], "--harmful", "bad/broken.jsonl"),
         setup=write("broken.jsonl", '{"instruction": "a"}\n{"instruction": \n'), match="2"),
    Case("eval-harmful-latin1", out(*EVAL[:3], "--harmful", "bad/latin1.jsonl"),
         setup=write("latin1.jsonl", '{"instruction": "caf\u00e9"}\n'.encode("latin-1")), match="UTF-8"),
    Case("eval-harmful-no-instruction", out(*EVAL[:3], "--harmful", "bad/rows.jsonl"),
         setup=write("rows.jsonl", '{"question": "a"}\n'), match="no 'instruction', 'messages', 'conversations' or 'prompt' field"),
    Case("eval-utility-no-equals", out(*EVAL[:3], "--utility", "sst2"), match="TASK=FILE"),
    Case("eval-utility-unknown-task", out(*EVAL[:3], "--utility", f"nope={SST2}"), match="nope"),
    Case("eval-utility-bad-regex", out(*EVAL[:3], "--utility", f"regex:(={SST2}")),
    Case("eval-limit-zero", out(*EVAL, "--limit", "0"), match="--limit"),
    Case("eval-batch-size-zero", out(*EVAL, "--batch-size", "0"), match="--batch-size"),
    Case("eval-max-new-tokens-out-of-range", out(*EVAL, "--max-new-tokens", "100000"), match="--max-new-tokens"),
    Case("eval-max-new-tokens-beyond-context", out(*EVAL, "--max-new-tokens", "300"), match="--max-new-tokens"),
    Case("eval-judge-unknown", out(*EVAL, "--judge", "nope"), match="--judge"),
    Case("eval-judge-moderation-without-model", out(*EVAL, "--judge", "moderation")),
    Case("eval-template-unknown", out(*EVAL, "--template", "nope"), match="--template"),
    Case("eval-dtype-unknown", out(*EVAL, "--dtype", "int8"), match="--dtype"),
    Case("eval-device-unknown", out(*EVAL, "--device", "tpu9"), match="tpu9"),
    Case("eval-device-cuda-absent", out(*EVAL[:-2], "--device", "cuda"), match="--device",
         notes={"skip_with_cuda": True}),
    # accepted: a 10 MB prompt is cut in the middle to the model's context, and counted
    Case("eval-10mb-prompt", out(*EVAL[:3], "--harmful", "bad/huge.jsonl", "--max-new-tokens", "2", "--device", "cpu"),
         setup=big_prompt, accept=accepted_eval(expect_truncated=1)),
    # eval: adapters
    Case("eval-adapter-missing", out(*EVAL, "--adapter", "bad/noadapter"), match="noadapter"),
    Case("eval-adapter-empty-folder", out(*EVAL, "--adapter", "bad/emptyadapter"), setup=folder_setup("emptyadapter"),
         match="adapter_config.json"),
    Case("eval-adapter-pickle", out(*EVAL, "--adapter", "bad/pickled"),
         setup=adapter_copy("pickled", lambda f: (f / "adapter_model.safetensors").rename(f / "adapter_model.bin")),
         match="pickle"),
    Case("eval-adapter-truncated", out(*EVAL, "--adapter", "bad/cut"),
         setup=adapter_copy("cut", truncate("adapter_model.safetensors")), match="adapter_model.safetensors"),
    Case("eval-adapter-config-invalid", out(*EVAL, "--adapter", "bad/conf"),
         setup=adapter_copy("conf", lambda f: (f / "adapter_config.json").write_text("{not json"))),
    Case("eval-adapter-wrong-shapes", out(*EVAL, "--adapter", "{adapter_small}"), match="does not fit"),
    Case("eval-adapter-other-base", out(*EVAL[:1], "--model", "{other}", *EVAL[3:], "--adapter", "{adapter}"),
         match="--allow-other-base"),
    # accepted: --allow-other-base is the explicit opt-out; it warns on stderr
    Case("eval-adapter-other-base-allowed", out(*EVAL[:1], "--model", "{other}", *EVAL[3:], "--adapter", "{adapter}",
                                                "--allow-other-base"),
         accept=accepted_eval(warning="asft: warning: adapter")),
    # eval: outputs
    Case("eval-out-is-a-file", (*EVAL, "--out", "unrelated/thesis.txt"), match="is a file", out="unrelated/thesis.txt"),
    Case("eval-out-is-the-model", (*EVAL, "--out", ALIGNED), match="--out", out="in/sandbox/aligned"),
    Case("eval-out-parent-of-input", (*EVAL, "--out", "in"), match="--out", out="in"),
    Case("eval-out-working-dir", (*EVAL, "--out", "."), match="working directory", out="."),
    Case("eval-s3-no-credentials", (*EVAL, "--out", f"s3://{BUCKET}/eval"), s3="no-credentials", match="credentials"),
    Case("eval-s3-bucket-missing", (*EVAL, "--out", "s3://no-such-bucket/eval"), s3="credentials",
         match="no-such-bucket"),
    # direction
    Case("direction-aligned-missing", out("direction", "--aligned", "bad/none", "--base", BASE), match="bad/none"),
    Case("direction-truncated", out("direction", "--aligned", "bad/cut", "--base", BASE),
         setup=model_copy("cut", truncate("model.safetensors")), match="model.safetensors"),
    Case("direction-shapes-differ", out("direction", "--aligned", ALIGNED, "--base", "{small}"), match="shapes differ"),
    Case("direction-target-unknown", out("direction", "--aligned", ALIGNED, "--base", BASE, "--target-modules", "nope"),
         match="nope"),
    Case("direction-regex-invalid", out("direction", "--aligned", ALIGNED, "--base", BASE, "--target-regex", "(")),
    Case("direction-dtype-unknown", out("direction", "--aligned", ALIGNED, "--base", BASE, "--dtype", "int4"),
         match="--dtype"),
    Case("direction-sha256-invalid", out("direction", "--aligned", ALIGNED, "--base", BASE, "--aligned-sha256", "xyz"),
         match="sha256"),
    Case("direction-out-is-an-input", ("direction", "--aligned", ALIGNED, "--base", BASE, "--out", BASE),
         match="--out", out="in/sandbox/base"),
    # train
    Case("train-data-missing", out(*TRAIN[:3], "--data", "bad/none.jsonl", *TRAIN[5:]), match="none.jsonl"),
    Case("train-data-empty", out(*TRAIN[:3], "--data", "bad/empty.jsonl", *TRAIN[5:]), setup=write("empty.jsonl", "")),
    Case("train-data-no-output", out(*TRAIN[:3], "--data", "bad/rows.jsonl", *TRAIN[5:]),
         setup=write("rows.jsonl", '{"instruction": "a"}\n'), match="output"),
    Case("train-data-latin1", out(*TRAIN[:3], "--data", "bad/latin1.jsonl", *TRAIN[5:]),
         setup=write("latin1.jsonl", '{"instruction": "caf\u00e9", "output": "x"}\n'.encode("latin-1")), match="UTF-8"),
    Case("train-lr-zero", out(*TRAIN, "--lr", "0"), match="--lr"),
    Case("train-lr-negative", out(*TRAIN, "--lr", "-1"), match="--lr"),
    Case("train-lr-nan", out(*TRAIN, "--lr", "nan"), match="--lr"),
    Case("train-lr-inf", out(*TRAIN, "--lr", "inf"), match="--lr"),
    Case("train-lam-inf", out(*TRAIN, "--lam", "inf"), match="--lam"),
    Case("train-epochs-zero", out(*TRAIN, "--epochs", "0"), match="--epochs"),
    Case("train-batch-size-zero", out(*TRAIN, "--batch-size", "0"), match="--batch-size"),
    Case("train-max-length-tiny", out(*TRAIN, "--max-length", "4"), match="--max-length"),
    Case("train-method-unknown", out(*TRAIN, "--method", "magic"), match="--method"),
    Case("train-asft-without-direction", out(*TRAIN, "--method", "asft"), match="direction"),
    Case("train-direction-missing", out(*TRAIN, "--method", "asft", "--direction", "bad/nodir"), match="nodir"),
    Case("train-direction-wrong-shapes", out(*TRAIN, "--method", "asft", "--direction", "{direction_small}"),
         match="shape"),
    Case("train-direction-other-modules", out(*TRAIN, "--method", "asft", "--direction", "{direction_k}"),
         match="q_proj"),
    Case("train-target-modules-unknown", out(*TRAIN, "--target-modules", "nope"), match="--target-modules"),
    Case("train-precision-bf16-on-cpu", out(*TRAIN, "--precision", "bf16"), match="precision"),
    Case("train-diverges", out(*TRAIN, "--method", "asft", "--direction", "{direction}", "--lr", "1.0",
                              "--lam", "1e38", "--max-steps", "3"), match="diverged"),
    Case("train-safelora-adapter-truncated", out(*TRAIN[:5], "--method", "safelora", "--direction", "{direction}",
                                                "--adapter", "bad/cut"),
         setup=adapter_copy("cut", truncate("adapter_model.safetensors")), match="adapter_model.safetensors"),
    Case("train-safelora-adapter-wrong-shapes", out(*TRAIN[:5], "--method", "safelora", "--direction", "{direction}",
                                                   "--adapter", "{adapter_small}")),
    Case("train-device-unknown", out(*TRAIN, "--device", "tpu9"), match="--device"),
    Case("train-out-is-the-data", (*TRAIN, "--out", FINETUNE), match="--out", out=FINETUNE),
    Case("train-s3-no-credentials", (*TRAIN, "--out", f"s3://{BUCKET}/adapter"), s3="no-credentials",
         match="credentials"),
    # landscape and inspect
    Case("landscape-range-reversed", out(*LANDSCAPE, "--range", "1,-1"), match="--range"),
    Case("landscape-range-not-numbers", out(*LANDSCAPE, "--range", "a,b"), match="--range"),
    Case("landscape-range-infinite", out(*LANDSCAPE, "--range", "-inf,inf"), match="--range"),
    Case("landscape-points-one", out(*LANDSCAPE, "--points", "1"), match="--points"),
    Case("landscape-direction-wrong-shapes", out(*LANDSCAPE[:5], "--direction", "{direction_small}", *LANDSCAPE[7:]),
         match="direction"),
    Case("landscape-harmful-missing", out(*LANDSCAPE[:3], "--harmful", "bad/none.jsonl", *LANDSCAPE[5:]),
         match="none.jsonl"),
    Case("inspect-nothing-to-inspect", out("inspect", "--direction", "{direction}"), match="exactly one"),
    Case("inspect-direction-missing", out("inspect", "--direction", "bad/nodir", "--adapter", "{adapter}"),
         match="nodir"),
    Case("inspect-adapter-wrong-shapes", out("inspect", "--direction", "{direction}", "--adapter", "{adapter_small}"),
         match="shape"),
    Case("inspect-adapter-truncated", out("inspect", "--direction", "{direction}", "--adapter", "bad/cut"),
         setup=adapter_copy("cut", truncate("adapter_model.safetensors")), match="adapter_model.safetensors"),
    Case("inspect-top-k-zero", out(*INSPECT, "--top-k", "0"), match="--top-k"),
    Case("inspect-checkpoint-truncated", out("inspect", "--direction", "{direction}", "--checkpoint", "bad/cut"),
         setup=model_copy("cut", truncate("model.safetensors")), match="model.safetensors"),
    Case("inspect-out-is-the-direction", (*INSPECT, "--out", "{direction}"), match="--out", out="in/direction"),
    # pipeline configs (all refused before Prefect starts)
    Case("pipeline-config-missing", ("pipeline", "--config", "bad/none.yaml"), match="none.yaml"),
    Case("pipeline-config-bad-yaml", ("pipeline", "--config", "bad/p.yaml"), setup=write("p.yaml", PIPELINE_BAD_YAML),
         match="YAML"),
    Case("pipeline-config-unknown-key", ("pipeline", "--config", "bad/p.yaml"), setup=write("p.yaml", "colour: red\n"),
         match="colour"),
    Case("pipeline-config-wrong-type", ("pipeline", "--config", "bad/p.yaml"),
         setup=write("p.yaml", "train:\n  epochs: many\n"), match="epochs"),
    Case("pipeline-config-removed-field", ("pipeline", "--config", "bad/p.yaml"),
         setup=write("p.yaml", "gates:\n  require_manual_approval: true\n"), match="manual_approval"),
    Case("pipeline-config-is-a-folder", ("pipeline", "--config", "bad/dir"), setup=folder_setup("dir")),
]

SUBPROCESS_CASES = ["cli-no-command", "cli-unknown-option", "train-lr-nan", "screen-data-missing",
                    "pipeline-config-bad-yaml", "eval-out-is-a-file", "eval-model-truncated"]


# ---------------------------------------------------------------- running a case

def _checksums(tree: Path) -> dict[str, str]:
    sums = {}
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.is_symlink() and os.access(path, os.R_OK):
            sums[path.relative_to(tree).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_file() or path.is_symlink():
            sums[path.relative_to(tree).as_posix()] = "unreadable:" + str(path.lstat().st_mtime_ns)
    return sums


def _tree_for(case: Case, world: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    tree = tmp_path / "tree"
    shutil.copytree(world, tree / "in")
    (tree / "unrelated").mkdir()
    (tree / "unrelated" / "thesis.txt").write_text("Four years of work. Do not overwrite.\n")
    if case.setup:
        case.setup(tree)
    places = {name: str(tree / "in" / name) for name in
              ("sandbox", "direction", "direction_k", "direction_small", "adapter", "adapter_small", "other", "small")}
    return tree, places


def _argv(case: Case, places: dict[str, str]) -> list[str]:
    return [arg.format(**places) for arg in case.argv]


def _s3_env(monkeypatch, case: Case, endpoint: str, tmp_path: Path) -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would keep earlier credentials
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe from a test machine
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    if case.s3 == "credentials":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def _run_in_process(argv: list[str], monkeypatch, capfd) -> tuple[int | None, str, str | None]:
    """(exit code, stderr, traceback or None)."""
    monkeypatch.setattr(sys, "argv", ["asft", *argv])
    code, crash = None, None
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # an uncaught exception is a traceback: the case fails
        crash = traceback.format_exc()
    return code, capfd.readouterr().err, crash


def _own_out(case: Case) -> str:
    return case.out.format(sandbox="in/sandbox")


def _changed(before: dict[str, str], after: dict[str, str], tree: Path, own_out: str, out_existed: bool) -> list[str]:
    """Files of the tree that changed, vanished or appeared; new files may appear only inside
    the case's own output folder, and only when that folder is new."""
    out_path = (tree / own_out).resolve()
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    new = [p for p in after if p not in before]
    if not out_existed:
        new = [p for p in new if out_path not in (tree / p).resolve().parents]
    return changed + new


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world, tmp_path, monkeypatch, capfd, request):
    if case.notes.get("skip_as_root") and os.geteuid() == 0:
        pytest.skip("root reads any file: an unreadable file cannot be made")
    if case.notes.get("skip_with_cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    TALLY["cases"] += 1
    tree, places = _tree_for(case, world, tmp_path)
    if case.s3:
        _s3_env(monkeypatch, case, request.getfixturevalue("s3_endpoint"), tmp_path)
    monkeypatch.chdir(tree)
    before, out_existed = _checksums(tree), (tree / _own_out(case)).exists()
    code, stderr, crash = _run_in_process(_argv(case, places), monkeypatch, capfd)
    changed = _changed(before, _checksums(tree), tree, _own_out(case), out_existed)
    TALLY["tracebacks"] += bool(crash or "Traceback" in stderr)
    TALLY["unrelated_changed"] += bool(changed)
    assert crash is None, crash
    assert "Traceback" not in stderr, stderr
    assert not changed, f"files changed outside the case's output: {changed}"
    if case.accept:
        assert code == 0, stderr
        case.accept(tree, stderr)
        TALLY["accepted"] += 1
        return
    last = [line for line in stderr.splitlines() if line.strip()][-1:] or [""]
    assert code == 2, stderr
    assert last[0].startswith("asft: error: "), stderr
    assert case.match in last[0], last[0]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_entry_point_behaves_the_same(case_id: str, world, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    tree, places = _tree_for(case, world, tmp_path)
    before, out_existed = _checksums(tree), (tree / _own_out(case)).exists()
    script = Path(sys.executable).with_name("asft")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "asft"]
    proc = subprocess.run([*command, *_argv(case, places)], cwd=tree, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("asft: error: ") and case.match in lines[-1], proc.stderr
    assert not _changed(before, _checksums(tree), tree, _own_out(case), out_existed)


def test_tally(request):
    """Printed at the end of the module: the corpus's score (goal: 0 tracebacks, 0 changed files)."""
    line = (f"bad-input corpus: {TALLY['cases']} cases, {TALLY['tracebacks']} tracebacks, "
            f"{TALLY['unrelated_changed']} with unrelated files changed, {TALLY['accepted']} documented acceptances")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    assert len(CASES) >= 60
    assert TALLY["tracebacks"] == 0 and TALLY["unrelated_changed"] == 0, line


def test_remembered_checkpoint_hash_follows_the_files(tmp_path, monkeypatch):
    """The cached model hash (used to match an adapter with its base) is re-computed when a file changes."""
    from asft.io import hashing
    from asft.io.hashing import checkpoint_sha256, remembered_checkpoint_sha256

    monkeypatch.setenv("ASFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "_RACY_SECONDS", -1.0)  # remember even files written just now
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"first")
    assert remembered_checkpoint_sha256(weights.parent) == checkpoint_sha256(weights.parent)
    assert len(list((tmp_path / "cache" / "checkpoint-sha256").iterdir())) == 1
    time.sleep(0.05)  # past the file clock's tick (a few ms), which the racy rule covers in real use
    with open(weights, "r+b") as fh:  # same size, same inode: only the times tell
        fh.write(b"other")
    assert remembered_checkpoint_sha256(weights.parent) == checkpoint_sha256(weights.parent)
