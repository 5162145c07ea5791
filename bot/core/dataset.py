"""The persona's SFT rows, built from seed pairs and approved pairs: pure functions.

The bot needs these too (/dataset counts rows and tokens, a /retrain is keyed by the dataset's
hash), so they live here rather than in ``training.dataset``, which writes, records and
imports dataset files.
"""

from __future__ import annotations

import json

from bot.core.curation import CurationRepository
from bot.core.formats import AlpacaRow, Format, ShareGptRow, dump_alpaca
from bot.core.persona import PersonaProfile
from bot.core.textkeys import question_key
from bot.core.types import ChatMessage, Role


def collect_rows(curation: CurationRepository, persona: PersonaProfile,
                 language: str) -> list[AlpacaRow]:
    """Seeds first, then approved pairs; an approved pair replaces a seed with its question."""
    system = persona.prompt_for(language)
    rows: dict[str, AlpacaRow] = {}
    for seed in persona.seed_pairs(language):
        rows[question_key(seed.question)] = seed.model_copy(update={"system": system})
    for p in curation.approved():
        # A pair approved from a turn in another language than the persona's was answered
        # under that language's prompt: it is trained under it too.
        spoken_in = persona.language_of(p.answer, language)
        rows[question_key(p.question)] = AlpacaRow(
            instruction=p.question, output=p.answer,
            system=system if spoken_in == language else persona.prompt_for(spoken_in),
            history=[tuple(h) for h in p.history],
        )
    return list(rows.values())


def training_messages(row: AlpacaRow) -> list[ChatMessage]:
    """One row as the conversation the model is trained on."""
    messages = [ChatMessage(Role.SYSTEM, row.system)] if row.system else []
    for q, a in row.history:
        messages += [ChatMessage(Role.USER, q), ChatMessage(Role.ASSISTANT, a)]
    return messages + [ChatMessage(Role.USER, row.question), ChatMessage(Role.ASSISTANT, row.output)]


def render(rows: list[AlpacaRow], fmt: Format) -> bytes:
    """The rows as a dataset file's bytes (what is hashed, written and trained on)."""
    if fmt == "alpaca":
        payload = [dump_alpaca(r) for r in rows]
    else:
        payload = [ShareGptRow.from_alpaca(r).dump() for r in rows]
    return (json.dumps(payload, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
