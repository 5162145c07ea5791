"""`chatman admin` output: human text (a table for lists) or, with ``--json``, the web
console's JSON."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from adapters.render import result_json
from bot.core.messages import Message
from bot.core.wording import word
from bot.services.admin import CommandResult, metrics_message


def render_result(result: CommandResult, language: str, *, as_json: bool = False,
                  console: Console | None = None) -> None:
    if as_json:
        print(json.dumps(result_json(result, language), ensure_ascii=False))
        return
    table = _table(result, language)
    if table is None:
        print(word(result.reply, language))
    else:
        (console or Console()).print(table)


def _table(result: CommandResult, language: str) -> Table | None:
    """Pending pairs and model versions as a table; anything else is a sentence or two."""
    if result.command == "pending" and result.pairs:
        d = result.data
        table = Table("#", "asked by", "question", "answer",
                      title=word(Message("pending.title", {
                          "total": d["total"], "page": d["page"], "pages": d["pages"]}),
                          language),
                      caption=word(Message("pending.hint"), language))
        for p in result.pairs:
            table.add_row(str(p.id), p.asked_by or "-", p.question, p.answer)
        return table
    if result.command == "models" and result.versions:
        table = Table("version", "status", "evaluation", "notes",
                      title=word(Message("models.title"), language))
        for v in result.versions:
            table.add_row(v.version, word(Message(f"model_status.{v.status}"), language),
                          word(metrics_message(v), language),
                          "; ".join(v.reasons) if v.status in ("rejected", "failed") else "")
        return table
    return None
