"""Results and refusals as JSON: the web console's answers and ``chatman admin --json``.

Today's keys stay (``command``, ``message``, ``pairs``, ``data``; ``error``) so the console
keeps working; ``code`` and ``params`` say the same as data, for clients with their own words.
``message`` and ``error`` are in the persona's language.
"""

from __future__ import annotations

from typing import Any

from bot.core.errors import UserFacingError
from bot.core.wording import word
from bot.services.admin import CommandResult


def result_json(result: CommandResult, language: str) -> dict[str, Any]:
    said = result.reply.to_dict()
    return {"command": result.command, "message": word(result.reply, language),
            "code": said["code"], "params": said["params"],
            "pairs": [p.to_dict() for p in result.pairs], "data": result.data}


def error_json(err: UserFacingError, language: str) -> dict[str, Any]:
    said = err.message.to_dict()
    return {"error": word(err.message, language), "code": said["code"], "params": said["params"]}
