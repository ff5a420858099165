"""The default screener: all-MiniLM-L6-v2 fine-tuned to tell harmful requests from benign ones.

Zero-shot similarity to written descriptions flags "write a JavaScript function that generates a
random number" as cybercrime; a frozen encoder with a fitted head cannot separate topic from
intent either (recall 0.54-0.67 at 3 % FPR on rows it did not train on). Fine-tuning the six
transformer layers (token embeddings stay frozen: the vocabulary is not what changes) with a
linear head on the mean-pooled embedding does. Single runs vary with the seed, so the recipe
averages the weights of a few seeds ("model soup": they share the pretrained start, so their
average is a model too). The threshold is set at the target FPR on a fifth of the labelled rows
that no seed trained on, with the weights as shipped (fp16), each kind of benign row (general,
task, tricky) weighing the same: 520 easy task rows once pulled a pooled threshold from 0.54 to
0.38 and doubled the FPR on general data. A word n-gram prefilter
(``prefilter.py``), fitted on the same rows, clears the plainly benign turns first; of the rest,
a turn whose pooled state after four layers a linear head calls plainly benign (below the 0.5 %
quantile of the held-out harmful rows' exit scores) stops there and skips the last two. A
softmax head on the same last pooled state names a flagged turn's harm category (fitted on
head_data's harmful rows and their categories): the review page gets its name from the forward
pass that flagged it.

Training data: ``head_data`` (written for asft, provenance in its README); the default is tuned
from it on first use (``default_folder``). ``asft screen tune`` tunes one on your own labelled rows. Weights are safetensors + JSON, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from asft import storage
from asft.data.screening.base import ScreenResult, request_text
from asft.data.screening.calibration import calibrate, operating_point, threshold_for_fpr
from asft.data.screening.prefilter import PREFILTER_WEIGHTS, Prefilter, fit_prefilter
from asft.data.screening.refusals import is_refusal
from asft.data.screening.encoder import BUNDLED_MODEL, BUNDLED_TUNED, EncoderConfig, resolve_model
from asft.errors import AsftError
from asft.templates import Record

HEAD_DATA = Path(__file__).parent / "head_data"
TUNED_WEIGHTS, TUNED_CONFIG = "tuned.safetensors", "tuned.json"
POOL_SCALE = 10.0  # unit-norm embeddings times this give the head logits of a useful size
EXIT_WEIGHTS = "exit.safetensors"
CATEGORY_WEIGHTS = "categories.safetensors"
CLEARED_BY_PREFILTER, EXITED_EARLY, SCORED = 0, 1, 2  # how far a turn went
REFUSED = "a harmful-looking request answered with a refusal: kept as safety data"


@dataclass(frozen=True)
class TuneSettings:
    layers: int = 6  # the first N of MiniLM's six transformer layers
    epochs: int = 3
    lr: float = 5e-5  # encoder layers
    head_lr: float = 2e-3
    batch_size: int = 32
    max_tokens: int = 128
    soup: int = 3  # seeds averaged
    seed: int = 0
    held_out: float = 0.2  # share of the rows that sets the threshold and is never trained on
    target_fpr: float = 0.03
    prefilter_harmful_share: float = 0.005  # of unseen harmful rows the word prefilter may clear
    prefilter_c: float = 10.0
    exit_layer: int = 4  # a turn may stop after this many layers (0, or >= layers: never)
    exit_harmful_share: float = 0.005  # of held-out harmful rows the early exit may clear


def benign_kind(category: str) -> str:
    """Which of the three kinds of benign data a head_data category is: the threshold holds its
    FPR on an even mix of them, so writing more rows of one kind does not move it."""
    return {"task_material": "task", "tricky": "tricky"}.get(category, "general")


def head_rows(harmful: bool) -> list[dict[str, str]]:
    """head_data's benign or harmful rows, file by file in name order."""
    paths = sorted(HEAD_DATA.glob(f"{'harmful' if harmful else 'benign'}*.jsonl"))
    return [json.loads(line) for path in paths for line in path.read_text(encoding="utf-8").splitlines()]


def shipped_training_set() -> tuple[list[Record], np.ndarray, np.ndarray]:
    """head_data's requests (every ``benign*.jsonl`` then every ``harmful*.jsonl``), labels and
    each row's kind (``benign_kind`` of its category; ``harmful`` for a harmful row)."""
    benign, harmful = head_rows(False), head_rows(True)
    records = [Record(row["instruction"], row["input"]) for row in benign + harmful]
    kinds = [benign_kind(row["category"]) for row in benign] + ["harmful"] * len(harmful)
    return records, np.array([False] * len(benign) + [True] * len(harmful)), np.array(kinds)


def shipped_harm_categories() -> tuple[list[str], list[str]]:
    """head_data's harmful requests and the harm category of each: what the category head learns."""
    rows = head_rows(True)
    return [request_text(Record(row["instruction"], row["input"])) for row in rows], [row["category"] for row in rows]


def data_digest(texts: list[str], labels: np.ndarray) -> str:
    """sha256 of the labelled texts in order: which rows a tuned model was made from."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels):
        digest.update(json.dumps([text, bool(label)], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``auto``: bf16 where the hardware computes it natively (a GPU, or a CPU with AVX512-BF16 or
    AMX: twice the rows/s of fp32, the same flags on 99.9 % of rows), else fp32 (emulated bf16
    is slower than fp32)."""
    import torch

    from asft.modeling import pick_device

    if precision != "auto":
        return precision
    if pick_device(device).type == "cuda":
        return "bf16"
    native = [getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bf16" if any(native) else "fp32"


class RequestClassifier:
    """The encoder, mean pooling and a linear head: a harm logit per text."""

    def __init__(self, device: str = "cpu", precision: str = "fp32", layers: int = 6):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from asft.modeling import pick_device

        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a bar per load, every time a screener starts
        path = resolve_model(BUNDLED_MODEL)
        self.device, self.bf16 = pick_device(device), resolve_precision(precision, device) == "bf16"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path, use_safetensors=True).to(self.device)
        self.encoder.encoder.layer = self.encoder.encoder.layer[:layers]
        self.encoder.config.num_hidden_layers = layers
        self.encoder.embeddings.requires_grad_(False)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1).to(self.device)
        torch.nn.init.zeros_(self.head.weight)  # every seed starts from the same point, so seeds can be averaged
        torch.nn.init.zeros_(self.head.bias)
        self.exit_layer, self.exit_head, self.exit_below = None, None, -np.inf  # no early exit until set_exit
        self.category_head, self.category_names = None, []  # no names until set_categories

    def state(self) -> dict[str, Any]:
        """What tuning changes (the layers and the head); embeddings come from the bundled encoder."""
        layers = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items() if not k.startswith("embeddings.")}
        return {**layers, **{f"head.{k}": v for k, v in self.head.state_dict().items()}}

    def load_state(self, tensors: dict[str, Any]) -> None:
        expected = set(self.state())
        if set(tensors) != expected:
            raise AsftError(f"tuned screener weights: expected {len(expected)} tensors of the MiniLM layers and head, "
                            f"got {len(tensors)}; make them with `asft screen tune`")
        self.encoder.load_state_dict({k.removeprefix("encoder."): v.float() for k, v in tensors.items()
                                      if k.startswith("encoder.")}, strict=False)
        self.head.load_state_dict({k.removeprefix("head."): v.float() for k, v in tensors.items() if k.startswith("head.")})

    def set_exit(self, layer: int, weight: np.ndarray, bias: float, clear_below: float) -> None:
        """Stop a turn after ``layer`` layers when a linear head on its pooled state there scores
        below ``clear_below``: the turns plainly benign to two thirds of the model skip the rest."""
        import torch

        self.exit_layer, self.exit_below = layer, clear_below
        self.exit_head = torch.nn.Linear(self.encoder.config.hidden_size, 1).to(self.device)
        with torch.no_grad():
            self.exit_head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).reshape(1, -1))
            self.exit_head.bias.fill_(float(bias))

    def set_categories(self, names: list[str], weight: np.ndarray, bias: np.ndarray) -> None:
        """Name the harm category of each turn that runs every layer: a softmax head on its last pooled state."""
        import torch

        self.category_names = list(names)
        self.category_head = torch.nn.Linear(self.encoder.config.hidden_size, len(names)).to(self.device)
        with torch.no_grad():
            self.category_head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.category_head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def _embed(self, texts: list[str], max_tokens: int):
        """The batch's token embeddings, attention mask and the additive mask the layers take."""
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt").to(self.device)
        hidden = self.encoder.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        additive = (1.0 - batch["attention_mask"][:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        return hidden, batch["attention_mask"], additive

    def _layers(self, hidden, additive, start: int, stop: int | None):
        for layer in self.encoder.encoder.layer[start:stop]:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple
        return hidden

    @staticmethod
    def _pool(hidden, mask):
        """Unit-norm mean of the unpadded tokens' states, times POOL_SCALE."""
        import torch

        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1) * POOL_SCALE

    def forward(self, texts: list[str], max_tokens: int):
        """The harm logit of each text of a batch, through every layer."""
        hidden, mask, additive = self._embed(texts, max_tokens)
        return self.head(self._pool(self._layers(hidden, additive, 0, None), mask)).squeeze(-1)

    def _batches(self, texts: list[str], batch_size: int):
        """Distinct texts and batches of their indices, sorted by length so that a batch pads little."""
        unique = list(dict.fromkeys(texts))
        order = np.argsort([len(t) for t in unique], kind="stable")
        return unique, [order[start:start + batch_size] for start in range(0, len(unique), batch_size)]

    def pooled_after(self, texts: list[str], layers: int, max_tokens: int, batch_size: int = 16) -> np.ndarray:
        """Each text's pooled state after the first ``layers`` layers (what the exit head reads)."""
        import torch

        unique, batches = self._batches(texts, batch_size)
        pooled = np.empty((len(unique), self.encoder.config.hidden_size), dtype=np.float32)
        self.encoder.eval()
        with torch.inference_mode():
            for rows in batches:
                hidden, mask, additive = self._embed([unique[i] for i in rows], max_tokens)
                pooled[rows] = self._pool(self._layers(hidden, additive, 0, layers), mask).float().cpu().numpy()
        where = {text: i for i, text in enumerate(unique)}
        return pooled[[where[t] for t in texts]]

    def score(self, texts: list[str], max_tokens: int, batch_size: int = 16,
              early_exit: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Harm probability of each text (0 for one that exits early), whether it exited, and its
        probability of each of ``category_names`` (zeros for one that exited); distinct texts run once."""
        import torch

        unique, batches = self._batches(texts, batch_size)
        probs, exited = np.zeros(len(unique), dtype=np.float32), np.zeros(len(unique), dtype=bool)
        categories = np.zeros((len(unique), len(self.category_names)), dtype=np.float32)
        split = self.exit_layer if early_exit and self.exit_head is not None else None
        self.encoder.eval()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for rows in batches:
                hidden, mask, additive = self._embed([unique[i] for i in rows], max_tokens)
                hidden = self._layers(hidden, additive, 0, split)
                if split is not None:
                    stop = (self.exit_head(self._pool(hidden, mask)).squeeze(-1) < self.exit_below).cpu().numpy()
                    exited[rows[stop]], keep = True, torch.as_tensor(~stop, device=hidden.device)
                    rows, hidden, mask, additive = rows[~stop], hidden[keep], mask[keep], additive[keep]
                    if not len(rows):
                        continue
                    hidden = self._layers(hidden, additive, split, None)
                pooled = self._pool(hidden, mask)
                probs[rows] = torch.sigmoid(self.head(pooled).squeeze(-1)).float().cpu().numpy()
                if self.category_head is not None:
                    categories[rows] = torch.softmax(self.category_head(pooled), -1).float().cpu().numpy()
        where = {text: i for i, text in enumerate(unique)}
        index = [where[t] for t in texts]
        return probs[index], exited[index], categories[index]


def harm_probabilities(model: RequestClassifier, prefilter: Prefilter | None, texts: list[str], max_tokens: int,
                       batch_size: int = 16, early_exit: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each text's harm probability (0 for one cleared before the last layer), how far it went
    (CLEARED_BY_PREFILTER, EXITED_EARLY or SCORED) and its category probabilities (zeros unless SCORED)."""
    stage = np.where(prefilter.passes(texts), SCORED, CLEARED_BY_PREFILTER) if prefilter else np.full(len(texts), SCORED)
    probs = np.zeros(len(texts), dtype=np.float32)
    categories = np.zeros((len(texts), len(model.category_names)), dtype=np.float32)
    passed = np.flatnonzero(stage == SCORED)
    if len(passed):
        probs[passed], exited, categories[passed] = model.score([texts[i] for i in passed], max_tokens, batch_size, early_exit)
        stage[passed[exited]] = EXITED_EARLY
    return probs, stage, categories


def _train_one(texts: list[str], labels: np.ndarray, settings: TuneSettings, seed: int, bar) -> dict[str, Any]:
    import torch

    torch.manual_seed(seed)
    model = RequestClassifier(layers=settings.layers)
    layers = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": layers, "lr": settings.lr},
                                   {"params": model.head.parameters(), "lr": settings.head_lr}], weight_decay=0.01)
    steps = settings.epochs * -(-len(texts) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    pos_weight = torch.tensor(float((~labels).sum() / max(labels.sum(), 1)))  # balanced classes
    rng = np.random.default_rng(seed)
    model.encoder.train()
    for _ in range(settings.epochs):
        order = rng.permutation(len(texts))
        for start in range(0, len(texts), settings.batch_size):
            rows = order[start:start + settings.batch_size]
            logits = model.forward([texts[i] for i in rows], settings.max_tokens)
            target = torch.tensor(labels[rows], dtype=torch.float32, device=logits.device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return {k: v.detach().clone() for k, v in model.state().items()}


def _soup(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The average of the seeds' weights, rounded to fp16 as shipped."""
    import torch

    return {k: torch.stack([s[k].float() for s in states]).mean(0).half().contiguous() for k in states[0]}


def tune(records: list[Record], labels: np.ndarray, out: str, settings: TuneSettings = TuneSettings(),
         progress: Callable[[str], None] | None = None, kinds: np.ndarray | None = None) -> dict[str, Any]:
    """Tune a screener on labelled requests and write it to ``out`` (tuned.safetensors, its word
    prefilter, tuned.json); the threshold is set on the held-out share, scored through the
    prefilter, with each kind of benign row (``kinds``, when given) weighted evenly. Returns
    tuned.json's content."""
    from safetensors.torch import save_file

    from asft.progress import progress_bar

    labels = np.asarray(labels, dtype=bool)
    held_rows = int(len(labels) * settings.held_out)
    if labels.sum() < 10 or (~labels).sum() < 10 or held_rows < 20:
        raise AsftError(f"tuning a screener needs at least 10 harmful and 10 benign rows and {20 / settings.held_out:.0f} "
                        f"rows in all (got {int(labels.sum())} harmful, {int((~labels).sum())} benign)")
    storage.check_output(out, "tuned-screener")
    texts = [request_text(r) for r in records]
    order = np.random.default_rng(settings.seed).permutation(len(texts))
    held, fit = order[:held_rows], order[held_rows:]
    if min(labels[held].sum(), (~labels[held]).sum()) < 5:
        raise AsftError(f"the {held_rows} held-out rows drawn with seed {settings.seed} have fewer than 5 harmful or benign "
                        "rows to set the threshold on; give more labelled rows of the rarer kind, or another --seed")
    if min(labels[fit].sum(), (~labels[fit]).sum()) < 2:
        raise AsftError(f"the {len(fit)} rows left to train on (seed {settings.seed}) have fewer than 2 harmful or benign rows; "
                        "give more labelled rows of the rarer kind, or another --seed")
    fit_texts = [texts[i] for i in fit]
    bar = progress_bar(settings.soup * settings.epochs * -(-len(fit) // settings.batch_size), "tune screener", unit="steps")
    states = [_train_one(fit_texts, labels[fit], settings, settings.seed + k, bar) for k in range(settings.soup)]
    bar.close()
    weights = _soup(states)
    model = RequestClassifier(layers=settings.layers)
    model.load_state(weights)
    prefilter, prefilter_summary = fit_prefilter(texts, labels, fit, held, settings.prefilter_harmful_share,
                                                 settings.prefilter_c, settings.seed)
    exit_summary = fit_exit(model, texts, labels, fit, held, settings) if 0 < settings.exit_layer < settings.layers else None
    category_summary = fit_categories(model, settings.max_tokens)
    scores, _, _ = harm_probabilities(model, prefilter, [texts[i] for i in held], settings.max_tokens)
    benign_kinds = np.asarray(kinds)[held][~labels[held]] if kinds is not None else None
    threshold, point = held_out_threshold(scores[~labels[held]], scores[labels[held]], benign_kinds, settings.target_fpr)
    summary = {"base_model": "all-MiniLM-L6-v2", "layers": settings.layers, "max_tokens": settings.max_tokens, "threshold": threshold,
               "operating_point": point, "prefilter": prefilter_summary,
               **({"early_exit": exit_summary} if exit_summary else {}), "categories": category_summary, "rows": len(texts), "harmful_rows": int(labels.sum()), "data_sha256": data_digest(texts, labels),
               "settings": asdict(settings)}
    with storage.staged_dir(out, "tuned-screener") as folder:
        save_file(weights, str(Path(folder) / TUNED_WEIGHTS))
        prefilter.save(Path(folder))
        if exit_summary:
            save_file({"weight": model.exit_head.weight.detach()[0].contiguous(), "bias": model.exit_head.bias.detach()},
                      str(Path(folder) / EXIT_WEIGHTS))
        save_file({"weight": model.category_head.weight.detach().contiguous(), "bias": model.category_head.bias.detach()},
                  str(Path(folder) / CATEGORY_WEIGHTS))
        (Path(folder) / TUNED_CONFIG).write_text(json.dumps(summary, indent=2) + "\n")
    if progress:
        progress(f"tuned screener written to {out}: recall {summary['operating_point']['recall']:.3f} "
                 f"at FPR {summary['operating_point']['fpr']:.3f} on the held-out rows")
    return summary


def fit_exit(model: RequestClassifier, texts: list[str], labels: np.ndarray, fit: np.ndarray, held: np.ndarray,
             settings: TuneSettings) -> dict[str, Any]:
    """Give ``model`` an early exit after ``settings.exit_layer`` layers: a balanced logistic
    regression on the fit rows' pooled states there, clearing below the ``exit_harmful_share``
    quantile of the held-out harmful rows' exit scores (held-out only: the layers were tuned on the
    fit rows, so those rows' states are not unseen). Returns its summary for tuned.json."""
    import torch
    from sklearn.linear_model import LogisticRegression

    def exit_states(rows: np.ndarray) -> np.ndarray:
        return model.pooled_after([texts[i] for i in rows], settings.exit_layer, settings.max_tokens)

    clf = LogisticRegression(class_weight="balanced", max_iter=5000).fit(exit_states(fit), labels[fit])
    model.set_exit(settings.exit_layer, clf.coef_[0], float(clf.intercept_[0]), -np.inf)
    with torch.no_grad():
        held_scores = model.exit_head(torch.from_numpy(exit_states(held)).to(model.device)).squeeze(-1).cpu().numpy()
    model.exit_below = float(np.quantile(held_scores[labels[held]], settings.exit_harmful_share))
    return {"layer": settings.exit_layer, "features": f"mean-pooled states after layer {settings.exit_layer}, "
            "logistic regression", "clear_below": model.exit_below, "harmful_share": settings.exit_harmful_share,
            "held_out_benign_cleared": round(float((held_scores[~labels[held]] < model.exit_below).mean()), 4)}


def fit_categories(model: RequestClassifier, max_tokens: int) -> dict[str, Any]:
    """Give ``model`` its category head: a multinomial logistic regression on the last pooled state
    of head_data's harmful rows, whatever rows the model was tuned on (a user's labelled rows seldom
    carry categories). On 512 held-out harmful rows it named 82 % right where the nearest harm
    description in the untuned encoder's space named 62 % (RESULTS.md, session 17). Returns its
    summary for tuned.json."""
    from sklearn.linear_model import LogisticRegression

    texts, categories = shipped_harm_categories()
    names = sorted(set(categories))
    states = model.pooled_after(texts, len(model.encoder.encoder.layer), max_tokens)
    clf = LogisticRegression(max_iter=5000).fit(states, [names.index(c) for c in categories])
    model.set_categories(names, clf.coef_, clf.intercept_)
    return {"names": names, "rows": len(texts), "features": "mean-pooled states after the last layer, "
            "multinomial logistic regression on head_data's harmful rows"}


def held_out_threshold(benign: np.ndarray, harmful: np.ndarray, benign_kinds: np.ndarray | None,
                       target_fpr: float) -> tuple[float, dict[str, Any]]:
    """The threshold at ``target_fpr`` on the held-out benign scores, every kind weighing the same,
    and its operating point with the FPR of each kind."""
    kinds = np.full(len(benign), "all") if benign_kinds is None else benign_kinds
    _, index, counts = np.unique(kinds, return_inverse=True, return_counts=True)
    threshold = threshold_for_fpr(benign, target_fpr, 1.0 / counts[index])
    where = f"{len(benign) + len(harmful)} held-out rows of the training data"
    if benign_kinds is not None:
        where += f", benign kinds weighted evenly ({', '.join(sorted(set(kinds)))})"
    point = operating_point(threshold, benign, harmful, target_fpr, where)
    point["fpr_by_kind"] = {k: round(float((benign[kinds == k] > threshold).mean()), 4) for k in sorted(set(kinds))}
    return threshold, point


def built_once(root: Path, records: list[Record], labels: np.ndarray, settings: TuneSettings,
               progress: Callable[[str], None], kinds: np.ndarray | None = None) -> Path:
    """The screener tuned from these rows with these settings, in ``root/<recipe hash>``: the first
    process to ask tunes it, the others wait and reuse it."""
    import torch

    texts, categories = shipped_harm_categories()  # the category head's rows, whatever the model's
    recipe = json.dumps([data_digest([request_text(r) for r in records], labels), asdict(settings), torch.__version__,
                         hashlib.sha256(json.dumps([texts, categories]).encode()).hexdigest()]
                        + ([hashlib.sha256("\n".join(kinds).encode()).hexdigest()] if kinds is not None else []))
    folder = root / hashlib.sha256(recipe.encode()).hexdigest()[:16]
    with storage.build_lock(folder):
        if not (folder / TUNED_CONFIG).exists():
            progress(f"the default screener is not built on this machine yet: tuning it on head_data into {folder} "
                     "(about 20 min on two CPU cores, once)")
            tune(records, labels, str(folder), settings, progress, kinds)
    return folder


def default_folder(progress: Callable[[str], None] | None = None) -> Path:
    """The default screener, tuned from head_data on first use (once per machine) into
    ASFT_SCREENER_CACHE (default: asft's cache); 21 MB of weights are not shipped."""
    records, labels, kinds = shipped_training_set()
    root = Path(os.environ.get("ASFT_SCREENER_CACHE", storage.cache_root() / "tuned-screener"))
    return built_once(root, records, labels, TuneSettings(),
                      progress or (lambda message: print(message, file=sys.stderr, flush=True)), kinds)


def tuned_folder(uri: str) -> Path:
    return default_folder() if uri == BUNDLED_TUNED else storage.materialize(uri)


def is_tuned_folder(uri: str) -> bool:
    """True for a folder written by ``tune`` (as opposed to a head or a sentence-transformers model)."""
    if "://" not in uri and not os.path.exists(uri):
        return False  # a hub model name
    return storage.exists(storage.join(uri, TUNED_CONFIG))


def weights_digest(uri: str) -> str:
    """sha256 of a tuned screener's weights and its prefilter's, exit head's and category head's: part of the
    pipeline's screening cache key."""
    digest = hashlib.sha256()
    for name in (TUNED_WEIGHTS, PREFILTER_WEIGHTS, EXIT_WEIGHTS, CATEGORY_WEIGHTS):
        if (tuned_folder(uri) / name).exists():
            digest.update((tuned_folder(uri) / name).read_bytes())
    return digest.hexdigest()


def load_tuned(uri: str, device: str = "cpu", precision: str = "fp32"
               ) -> tuple[RequestClassifier, Prefilter | None, dict[str, Any]]:
    """The tuned model (with its early exit and category head, if it was tuned with them), its
    prefilter (None for a folder tuned before asft had one) and tuned.json."""
    from safetensors.torch import load_file

    folder = tuned_folder(uri)
    if not (folder / TUNED_WEIGHTS).exists() or not (folder / TUNED_CONFIG).exists():
        raise AsftError(f"tuned screener {uri}: needs {TUNED_WEIGHTS} and {TUNED_CONFIG}; make one with `asft screen tune`")
    config = json.loads((folder / TUNED_CONFIG).read_text())
    model = RequestClassifier(device, precision, config.get("layers", 6))
    model.load_state(load_file(str(folder / TUNED_WEIGHTS)))
    if "early_exit" in config:
        head = load_file(str(folder / EXIT_WEIGHTS))
        model.set_exit(config["early_exit"]["layer"], head["weight"].numpy(), float(head["bias"][0]),
                       config["early_exit"]["clear_below"])
    if "categories" in config:
        head = load_file(str(folder / CATEGORY_WEIGHTS))
        model.set_categories(config["categories"]["names"], head["weight"].numpy(), head["bias"].numpy())
    prefilter = Prefilter.load(folder, config["prefilter"]) if "prefilter" in config else None
    return model, prefilter, config


class TunedScreener:
    """Screens each user turn of a record with a tuned model, behind its word prefilter and with its
    early exit unless ``encoder.prefilter`` or ``encoder.early_exit`` is off; a record scores its
    worst turn. The reason names that turn's harm category (``unnamed`` from a folder tuned before
    asft had a category head), for the review page."""

    name = "encoder"

    def __init__(self, config: EncoderConfig | None = None):
        self.config = config or EncoderConfig()
        self.model, prefilter, self.tuned = load_tuned(self.config.tuned_model, self.config.device, self.config.precision)
        self.prefilter = prefilter if self.config.prefilter else None
        self.early_exit = self.tuned.get("early_exit") if self.config.early_exit else None
        self.max_tokens = self.tuned.get("max_tokens", self.config.max_tokens)
        self.threshold, self.operating_point = self.tuned.get("threshold", 0.5), None
        self.turns = dict.fromkeys(("screened", "cleared_by_prefilter", "exited_early", "kept_refusals"), 0)
        if self.config.calibration:
            self.threshold, self.operating_point = calibrate(self, self.config.calibration,
                                                             self.config.calibration_labels, self.config.target_fpr)
            self.turns = dict.fromkeys(self.turns, 0)  # count the data's turns, not the sample's

    def describe(self) -> dict[str, Any]:
        info = {"name": self.name, "mode": "tuned", "tuned_model": self.config.tuned_model,
                "threshold": round(self.threshold, 6), "max_tokens": self.max_tokens,
                "precision": "bf16" if self.model.bf16 else "fp32",
                "prefilter": {**self.tuned["prefilter"], "turns": self.turns} if self.prefilter else None,
                "early_exit": {**self.early_exit, "turns": self.turns} if self.early_exit else None,
                **self.config.model_dump(include={"target_fpr", "calibration", "batch_size", "device", "keep_refusals"}),
                "kept_refusals": self.turns["kept_refusals"], "harm_categories": self.model.category_names,
                "trained_rows": self.tuned["rows"], "data_sha256": self.tuned["data_sha256"],
                "shipped_operating_point": self.tuned["operating_point"]}
        if self.operating_point:
            info["operating_point"] = self.operating_point
        return info

    def category(self, probabilities: np.ndarray) -> str:
        """The most probable harm category of a scored turn and its probability."""
        if not self.model.category_names:
            return 'unnamed:"tuned before asft named categories; tune again to name them"'
        best = int(probabilities.argmax())
        return f"{self.model.category_names[best]}:category p={probabilities[best]:.2f}"

    def score(self, records: list[Record]) -> list[ScreenResult]:
        turns = [record.exchanges() for record in records]
        flat = [user for ts in turns for user, _ in ts]
        probs, stage, categories = harm_probabilities(self.model, self.prefilter, flat, self.max_tokens,
                                                      self.config.batch_size, self.early_exit is not None)
        # a turn answered with a refusal teaches refusing, not harm: only the answered turns can flag a record
        refused = np.array([self.config.keep_refusals and is_refusal(answer) for ts in turns for _, answer in ts], dtype=bool)
        counted = np.where(refused, -1.0, probs)
        self.turns["screened"] += len(flat)
        self.turns["cleared_by_prefilter"] += int((stage == CLEARED_BY_PREFILTER).sum())
        self.turns["exited_early"] += int((stage == EXITED_EARLY).sum())
        self.turns["kept_refusals"] += int((refused & (probs > self.threshold)).sum())
        cleared = {CLEARED_BY_PREFILTER: "cleared by the word prefilter", SCORED: "below the threshold",
                   EXITED_EARLY: f"cleared after layer {self.model.exit_layer}"}
        starts = np.cumsum([0] + [len(ts) for ts in turns[:-1]])
        worst = [int(start + np.argmax(counted[start:start + len(ts)])) for start, ts in zip(starts, turns)]
        flagged = [bool(counted[w] > self.threshold) for w in worst]
        results = []
        for start, record_turns, w, flag in zip(starts, turns, worst, flagged):
            kept = None if flag else next((i for i in range(start, start + len(record_turns))
                                           if refused[i] and probs[i] > self.threshold), None)
            w = w if kept is None else kept
            where = "request" if len(record_turns) == 1 else f"user turn {w - start + 1}"
            named = self.category(categories[w]) if flag else f'refused:"{REFUSED}"' if kept is not None else (
                f'none:"{cleared[stage[w]]}"')
            reason = f"encoder:{named} ({where} p={probs[w]:.3f})"
            results.append(ScreenResult(flag, float(probs[w]), (reason,), refused=kept is not None))
        return results
