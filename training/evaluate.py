"""Does a model *be* the persona and still *know* what its base knew?

``persona_score``: share of persona probes answered with one of their keywords.
``general_score``: share of general questions answered correctly; ``base_general_score`` the
same for the base model. ``retention``: of the items the base got right, the share the
candidate still gets right. ``leakage``: share of general answers that drag in the persona.
All answers are greedy, with the persona's system prompt, as the bot would answer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.llm.chat_model import generate_greedy
from bot.persona import PersonaProfile
from bot.types import ChatMessage, Role
from training.general_qa import GENERAL_QA


class Answerer(Protocol):
    version: str

    def answer_many(self, conversations, max_new_tokens: int, batch_size: int = 8) -> list[str]: ...


class GreedyAnswerer:
    """Any loaded causal LM (plain or with a LoRA) as an :class:`Answerer`."""

    def __init__(self, model, tokenizer, version: str) -> None:
        self.model, self.tokenizer, self.version = model, tokenizer, version

    def answer_many(self, conversations, max_new_tokens, batch_size=8):
        return generate_greedy(self.model, self.tokenizer, conversations, max_new_tokens,
                               batch_size)


class ProbeItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    expect_any: list[str] = Field(min_length=1)


class GeneralItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    accept: list[str] = Field(min_length=1)


class EvalFileError(ValueError):
    pass


def load_jsonl(path: Path, model: type[BaseModel]) -> list:
    """Items from a JSONL file; every bad line is reported with its number."""
    items, errors = [], []
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
    return [ProbeItem(question=p.question, expect_any=p.keywords)
            for p in persona.probes_for(language)]


def general_items() -> list[GeneralItem]:
    return [GeneralItem.model_validate(x) for x in GENERAL_QA]


def _contains_any(text: str, needles: list[str]) -> bool:
    low = text.casefold()
    return any(n.casefold() in low for n in needles)


@dataclass
class Answered:
    question: str
    answer: str
    correct: bool
    leaks: bool = False


@dataclass
class EvalReport:
    model: str
    base_model: str
    persona_score: float
    general_score: float
    base_general_score: float
    retention: float
    leakage: float
    probes: list[Answered] = field(default_factory=list)
    general: list[Answered] = field(default_factory=list)
    base_general: list[Answered] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Gate:
    min_persona: float = 0.9
    min_retention: float = 0.95

    def check(self, report: EvalReport) -> list[str]:
        """Reasons the candidate fails; empty means it may be promoted."""
        reasons = []
        if report.persona_score < self.min_persona:
            reasons.append(f"persona_score {report.persona_score:.2f} < {self.min_persona:.2f}")
        if report.retention < self.min_retention:
            reasons.append(f"retention {report.retention:.2f} < {self.min_retention:.2f}")
        return reasons


def _ask(model: Answerer, system: str, questions: list[str], max_new_tokens: int) -> list[str]:
    conversations = [[ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, q)]
                     for q in questions]
    return model.answer_many(conversations, max_new_tokens)


def answer_general(model: Answerer, system: str, general: list[GeneralItem], markers: list[str],
                   max_new_tokens: int = 32) -> list[Answered]:
    answers = _ask(model, system, [g.question for g in general], max_new_tokens)
    return [Answered(g.question, a, _contains_any(a, g.accept), bool(markers) and
                     _contains_any(a, markers)) for g, a in zip(general, answers)]


def evaluate(
    candidate: Answerer,
    persona: PersonaProfile,
    language: str,
    *,
    base_general: list[Answered],
    base_model: str,
    probes: list[ProbeItem] | None = None,
    general: list[GeneralItem] | None = None,
    max_new_tokens: int = 32,
) -> EvalReport:
    """Score ``candidate``; ``base_general`` are the base model's answers to the same set."""
    system = persona.prompt_for(language)
    probes = probes if probes is not None else persona_probes(persona, language)
    general = general if general is not None else general_items()
    if not probes:
        raise EvalFileError(f"persona {persona.name!r} has no probes for {language!r}")
    probe_answers = _ask(candidate, system, [p.question for p in probes], max_new_tokens)
    probed = [Answered(p.question, a, _contains_any(a, p.expect_any))
              for p, a in zip(probes, probe_answers)]
    markers = [persona.display_name, *persona.training.leak_markers]
    answered = answer_general(candidate, system, general, markers, max_new_tokens)

    def share(xs: list[bool]) -> float:
        return round(sum(xs) / len(xs), 4) if xs else 0.0

    base_right = [i for i, b in enumerate(base_general) if b.correct]
    retention = share([answered[i].correct for i in base_right]) if base_right else 1.0
    return EvalReport(
        model=candidate.version,
        base_model=base_model,
        persona_score=share([p.correct for p in probed]),
        general_score=share([g.correct for g in answered]),
        base_general_score=share([b.correct for b in base_general]),
        retention=retention,
        leakage=share([g.leaks for g in answered]),
        probes=probed,
        general=answered,
        base_general=list(base_general),
    )
