"""Does a model *be* the persona and still *know* what its base knew, as users hear it?

Every answer is generated the way the bot serves it: the persona's system prompt, the serving
sampling settings (temperature, top-p, repetition penalty), the token cap that follows from
the persona's speech budget, and the same cut to the last complete sentence. Each question is
asked ``samples`` times under fixed seeds, so a score is a mean over draws a user could get and
``worst`` is the unluckiest draw; the decoding is stored with the metrics.

Scores, each a share in [0, 1]:

* per probe kind: ``identity`` (who are you, paraphrased), ``fact`` (about the persona),
  ``consistency`` (identity again after two unrelated turns), ``injection`` (a user says the
  bot is someone else); ``persona_score`` covers all probes;
* ``general_score``: general questions answered correctly (``base_general_score``: the base);
* ``retention``: on the items the base usually gets right, the candidate's accuracy relative
  to the base's own under the same sampling (1.0: nothing lost);
* ``leakage``: general answers that drag in the persona;
* ``within_budget``: replies that fit the speech budget without being cut.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.core.persona import PersonaProfile, ProbeKind
from bot.core.speech_budget import SpeechBudget, shape_reply
from bot.core.types import ChatMessage, Role
from bot.infra.llm.chat_model import Generated, GenerationSettings, generate_batch
from training.general_qa import general_qa

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from bot.core.config import Settings
    from bot.infra.llm.chat_model import CausalLM

PROBE_KINDS: tuple[str, ...] = ("identity", "fact", "consistency", "injection")


@dataclass(frozen=True)
class Decoding:
    """The serving decoding, and how many seeded draws evaluation takes per question."""

    temperature: float = 0.3
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 52
    samples: int = 3
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples must be at least 1")

    @property
    def draws(self) -> int:
        return 1 if self.temperature == 0 else self.samples

    def settings(self, draw: int) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens,
                                  temperature=self.temperature, top_p=self.top_p,
                                  repetition_penalty=self.repetition_penalty,
                                  seed=self.seed + draw)

    @classmethod
    def serving(cls, settings: Settings, persona: PersonaProfile, language: str,
                samples: int = 3) -> Decoding:
        """What ``settings`` (CHATMAN_LLM_*) make the bot use for ``persona``."""
        cap = settings.llm_max_new_tokens or persona.speech.max_new_tokens(language)
        return cls(temperature=settings.llm_temperature, top_p=settings.llm_top_p,
                   repetition_penalty=settings.llm_repetition_penalty, max_new_tokens=cap,
                   samples=samples)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "draws": self.draws}


class Answerer(Protocol):
    version: str

    def answer_many(self, conversations: Sequence[Sequence[ChatMessage]],
                    settings: GenerationSettings, batch_size: int = 8) -> list[Generated]: ...


class ModelAnswerer:
    """Any loaded causal LM (plain or with a LoRA) as an :class:`Answerer`."""

    def __init__(self, model: CausalLM, tokenizer: PreTrainedTokenizerBase, version: str,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.model, self.tokenizer, self.version = model, tokenizer, version
        self.progress = progress

    def answer_many(self, conversations: Sequence[Sequence[ChatMessage]],
                    settings: GenerationSettings, batch_size: int = 8) -> list[Generated]:
        return generate_batch(self.model, self.tokenizer, conversations, settings, batch_size,
                              progress=self.progress)


class ProbeItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    expect_any: list[str] = Field(min_length=1)
    kind: ProbeKind = "identity"
    history: list[tuple[str, str]] = Field(default_factory=list)


class GeneralItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    accept: list[str] = Field(min_length=1)


class EvalFileError(ValueError):
    pass


Item = TypeVar("Item", bound=BaseModel)


def load_jsonl(path: Path, model: type[Item]) -> list[Item]:
    """Items from a JSONL file; every bad line is reported with its number."""
    items: list[Item] = []
    errors: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(model.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as err:
            errors.append(f"{path}:{n}: {str(err).splitlines()[0]}")
    if errors:
        raise EvalFileError("\n".join(errors))
    if not items:
        raise EvalFileError(f"{path}: no items")
    return items


def persona_probes(persona: PersonaProfile, language: str) -> list[ProbeItem]:
    return [ProbeItem(question=p.question, expect_any=p.keywords, kind=p.kind,
                      history=list(p.history)) for p in persona.probes_for(language)]


def general_items(language: str = "en") -> list[GeneralItem]:
    """The built-in general-knowledge set in ``language`` (see training/general_qa.py)."""
    return [GeneralItem.model_validate(x) for x in general_qa(language)]


def _contains_any(text: str, needles: list[str]) -> bool:
    low = text.casefold()
    return any(n.casefold() in low for n in needles)


@dataclass
class Answered:
    question: str
    answer: str  # as the user gets it: cut to the speech budget
    correct: bool
    leaks: bool = False
    kind: str = "general"
    draw: int = 0
    seconds: float = 0.0
    within_budget: bool = True  # the model sized it itself: no cut was needed


@dataclass
class EvalReport:
    model: str
    base_model: str
    persona_score: float
    general_score: float
    base_general_score: float
    retention: float
    leakage: float
    within_budget: float = 1.0
    # metric → {"mean", "worst"} over the draws; per probe kind too
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    speech_seconds: dict[str, float] = field(default_factory=dict)  # p50, p95, max
    decoding: dict[str, object] = field(default_factory=dict)  # Decoding.to_dict()
    probes: list[Answered] = field(default_factory=list)
    general: list[Answered] = field(default_factory=list)
    base_general: list[Answered] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def first_draw(self, items: list[Answered]) -> list[Answered]:
        return [a for a in items if a.draw == 0]


@dataclass(frozen=True)
class Gate:
    """Means over the draws must reach these; a rejected version shows the reasons."""

    min_persona: float = 0.9
    min_retention: float = 0.9
    min_within_budget: float = 0.8

    def check(self, report: EvalReport) -> list[str]:
        """Reasons the candidate fails; empty means it may be promoted."""
        reasons = []
        if report.persona_score < self.min_persona:
            reasons.append(f"persona_score {report.persona_score:.2f} < {self.min_persona:.2f}")
        if report.retention < self.min_retention:
            reasons.append(f"retention {report.retention:.2f} < {self.min_retention:.2f}")
        if report.within_budget < self.min_within_budget:
            reasons.append(f"within_budget {report.within_budget:.2f} < "
                           f"{self.min_within_budget:.2f}")
        return reasons


def _conversation(system: str, question: str,
                  history: Sequence[tuple[str, str]] = ()) -> list[ChatMessage]:
    messages = [ChatMessage(Role.SYSTEM, system)]
    for q, a in history:
        messages += [ChatMessage(Role.USER, q), ChatMessage(Role.ASSISTANT, a)]
    return messages + [ChatMessage(Role.USER, question)]


def _ask(model: Answerer, conversations: list[list[ChatMessage]], decoding: Decoding,
         budget: SpeechBudget, language: str) -> list[list[tuple[str, bool, float]]]:
    """Per draw, per conversation: (reply as heard, fitted uncut, seconds of speech)."""
    out = []
    for draw in range(decoding.draws):
        heard = []
        for g in model.answer_many(conversations, decoding.settings(draw)):
            text = shape_reply(g.text, budget, language, truncated=g.truncated)
            fits = not g.truncated and budget.fits(g.text, language)
            heard.append((text, fits, budget.seconds(text, language)))
        out.append(heard)
    return out


def answer_general(model: Answerer, system: str, general: list[GeneralItem], markers: list[str],
                   decoding: Decoding, budget: SpeechBudget, language: str) -> list[Answered]:
    """Answers to the general set, every draw (``Answered.draw``)."""
    draws = _ask(model, [_conversation(system, g.question) for g in general], decoding, budget,
                 language)
    return [Answered(g.question, text, _contains_any(text, g.accept),
                     bool(markers) and _contains_any(text, markers), "general", d, secs, fits)
            for d, heard in enumerate(draws) for g, (text, fits, secs) in zip(general, heard)]


def _share(xs: Sequence[bool]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def _by_draw(items: list[Answered]) -> dict[int, list[Answered]]:
    out: dict[int, list[Answered]] = {}
    for a in items:
        out.setdefault(a.draw, []).append(a)
    return out


def _retention(candidate: list[Answered], base: list[Answered]) -> list[float]:
    """Per candidate draw: accuracy on the base's known items over the base's own there."""
    base_rate: dict[str, list[bool]] = {}
    for b in base:
        base_rate.setdefault(b.question, []).append(b.correct)
    known = {q for q, xs in base_rate.items() if sum(xs) / len(xs) >= 0.5}
    if not known:
        return [1.0]
    base_acc = statistics.mean(statistics.mean(base_rate[q]) for q in known)
    out = []
    for items in _by_draw(candidate).values():
        acc = _share([a.correct for a in items if a.question in known])
        # Unclipped per draw: clipping each draw at 1 would bias the mean below 1 even for
        # the base measured against itself; the mean is clipped once, in ``evaluate``.
        out.append(round(acc / base_acc, 4))
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def evaluate(
    candidate: Answerer,
    persona: PersonaProfile,
    language: str,
    *,
    base_general: list[Answered],
    base_model: str,
    probes: list[ProbeItem] | None = None,
    general: list[GeneralItem] | None = None,
    decoding: Decoding | None = None,
    system: str | None = None,
) -> EvalReport:
    """Score ``candidate``; ``base_general`` are the base model's answers to the same set."""
    system = system or persona.prompt_for(language)
    decoding = decoding or Decoding(max_new_tokens=persona.speech.max_new_tokens(language))
    budget = persona.speech
    probes = probes if probes is not None else persona_probes(persona, language)
    general = general if general is not None else general_items(language)
    if not probes:
        raise EvalFileError(f"persona {persona.name!r} has no probes for {language!r}")
    draws = _ask(candidate, [_conversation(system, p.question, p.history) for p in probes],
                 decoding, budget, language)
    probed = [Answered(p.question, text, _contains_any(text, p.expect_any), False, p.kind, d,
                       secs, fits)
              for d, heard in enumerate(draws) for p, (text, fits, secs) in zip(probes, heard)]
    markers = [persona.display_name, *persona.training.leak_markers]
    answered = answer_general(candidate, system, general, markers, decoding, budget, language)

    per_draw: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        per_draw.setdefault(name, []).append(value)

    general_by_draw = _by_draw(answered)
    for d, items in _by_draw(probed).items():
        record("persona_score", _share([a.correct for a in items]))
        for kind in PROBE_KINDS:
            of_kind = [a.correct for a in items if a.kind == kind]
            if of_kind:
                record(kind, _share(of_kind))
        g = general_by_draw.get(d, [])
        record("general_score", _share([a.correct for a in g]))
        record("leakage", _share([a.leaks for a in g]))
        record("within_budget", _share([a.within_budget for a in items + g]))
    per_draw["retention"] = _retention(answered, base_general)
    base_scores = [_share([b.correct for b in items]) for items in _by_draw(base_general).values()]
    scores = {name: {"mean": round(statistics.mean(v), 4),
                     "worst": max(v) if name == "leakage" else min(v)}
              for name, v in per_draw.items()}
    scores["retention"] = {k: min(1.0, v) for k, v in scores["retention"].items()}
    heard = [a.seconds for a in probed + answered]
    return EvalReport(
        model=candidate.version,
        base_model=base_model,
        persona_score=scores["persona_score"]["mean"],
        general_score=scores["general_score"]["mean"],
        base_general_score=round(statistics.mean(base_scores), 4) if base_scores else 0.0,
        retention=scores["retention"]["mean"],
        leakage=scores["leakage"]["mean"],
        within_budget=scores["within_budget"]["mean"],
        scores=scores,
        speech_seconds={"p50": _percentile(heard, 0.5), "p95": _percentile(heard, 0.95),
                        "max": round(max(heard, default=0.0), 2)},
        decoding=decoding.to_dict(),
        probes=probed,
        general=answered,
        base_general=list(base_general),
    )
