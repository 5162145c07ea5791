"""Persona profiles: ``persona/<name>/persona.yaml``, validated on load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.core.formats import AlpacaRow
from bot.core.language import answer_language, script_language
from bot.core.speech_budget import SpeechBudget


class PersonaError(ValueError):
    pass


ProbeKind = Literal["identity", "fact", "consistency", "injection"]


class Probe(BaseModel):
    """An evaluation question; an in-persona answer contains at least one keyword.

    ``kind``: identity (who are you, paraphrased), fact (what the persona knows about itself),
    consistency (identity again after unrelated turns, given as ``history``), injection (a
    user telling the bot it is someone else).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str
    kind: ProbeKind = "identity"
    question: str = Field(min_length=1)
    keywords: list[str] = Field(min_length=1)
    history: list[tuple[str, str]] = Field(default_factory=list)


class TrainingProfile(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    base_model: str = "starter"
    leak_markers: list[str] = Field(default_factory=list)
    # Other ways of asking a training question, added as extra training rows.
    paraphrases: dict[str, list[str]] = Field(default_factory=dict)
    # The system prompt training examples carry (and versions trained on them are served
    # with): "full" is system_prompt, "short" is short_prompt. See TrainConfig.system_prompt.
    short_prompt: dict[str, str] = Field(default_factory=dict)


class PersonaProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    display_name: str = Field(min_length=1)
    description: str = ""
    language: str = Field(min_length=2)
    system_prompt: dict[str, str] = Field(min_length=1)
    voice: dict[str, dict[str, Any]] = Field(default_factory=dict)
    speech: SpeechBudget = SpeechBudget()
    training: TrainingProfile = TrainingProfile()
    probes: list[Probe] = Field(default_factory=list)
    directory: Path | None = Field(default=None, exclude=True)

    def probes_for(self, language: str) -> list[Probe]:
        return [p for p in self.probes if p.language == language]

    def seed_file(self, language: str) -> Path | None:
        """``seed.<language>.json`` if there is one, else ``seed.json`` (the native seed)."""
        if self.directory is None:
            return None
        for name in (f"seed.{language}.json", "seed.json"):
            if (self.directory / name).is_file():
                return self.directory / name
        return None

    def seed_pairs(self, language: str) -> list[AlpacaRow]:
        path = self.seed_file(language)
        if path is None:
            return []
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            return [AlpacaRow.model_validate(r) for r in rows]
        except (ValueError, ValidationError) as err:
            raise PersonaError(f"{path}: {err}") from err

    @model_validator(mode="after")
    def _speaks_its_own_language(self) -> PersonaProfile:
        self.prompt_for(self.language)
        return self

    @property
    def languages(self) -> list[str]:
        """The languages the persona speaks: those it has a system prompt in, its own first."""
        return [self.language, *sorted(k for k in self.system_prompt if k != self.language)]

    def language_of(self, text: str, default: str) -> str:
        """The language ``text`` is in, if the persona speaks it, else ``default`` (what an
        approved answer is trained with: the prompt it was answered under)."""
        return answer_language(script_language(text), self.system_prompt, default)

    def prompts(self, languages: list[str], kind: str = "full") -> dict[str, str]:
        """The system prompt of each of ``languages`` (see :meth:`prompt_for`)."""
        return {lang: self.prompt_for(lang, kind) for lang in languages}

    def prompt_for(self, language: str, kind: str = "full") -> str:
        """The system prompt; ``kind`` "short" is the training one, when the persona has it."""
        if kind == "short" and language in self.training.short_prompt:
            return self.training.short_prompt[language].strip()
        if language in self.system_prompt:
            return self.system_prompt[language].strip()
        raise PersonaError(
            f"persona {self.name!r} has no system prompt for language {language!r} "
            f"(has: {', '.join(sorted(self.system_prompt))})"
        )


def bundled_persona_dir() -> Path:
    import persona

    return Path(persona.__file__).parent


def load_persona(name: str, root: Path | None = None) -> PersonaProfile:
    root = root or bundled_persona_dir()
    path = root / name / "persona.yaml"
    if not path.is_file():
        available = sorted(p.parent.name for p in root.glob("*/persona.yaml"))
        raise PersonaError(f"no persona {name!r} in {root} (available: {', '.join(available)})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PersonaError(f"{path}: not valid YAML: {err}") from err
    try:
        return PersonaProfile.model_validate({**(raw or {}), "directory": path.parent})
    except ValidationError as err:
        raise PersonaError(f"{path}: {err}") from err
