"""Persona profiles: ``persona/<name>/persona.yaml``, validated on load."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class PersonaError(ValueError):
    pass


class PersonaProfile(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    display_name: str = Field(min_length=1)
    description: str = ""
    language: str = Field(min_length=2)
    system_prompt: dict[str, str] = Field(min_length=1)

    @model_validator(mode="after")
    def _speaks_its_own_language(self) -> PersonaProfile:
        self.prompt_for(self.language)
        return self

    def prompt_for(self, language: str) -> str:
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
        return PersonaProfile.model_validate(raw)
    except ValidationError as err:
        raise PersonaError(f"{path}: {err}") from err
