"""Logging set-up that keeps secrets out of every log line, tracebacks included.

:func:`configure_logging` routes every logger to one root handler whose formatter masks the
whole formatted record (message, exception text and stack), as text lines or as one JSON object
a line (``CHATMAN_LOG_FORMAT=json``). Every record carries the turn it was logged in
(``turn_id``, see :mod:`bot.core.tracing`). :func:`mask` applies the same masking to text the
CLI prints itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Literal, cast
from urllib.parse import quote, quote_plus

from pythonjsonlogger.json import JsonFormatter

from bot.core.tracing import turn_id

MASK = "***"

#: Loggers of libraries that may install handlers of their own (uvicorn does, through
#: dictConfig, every time a server is configured) or that log URLs with tokens in them.
LIBRARY_LOGGERS = (
    "telegram", "httpx", "httpcore", "discord", "uvicorn", "uvicorn.error", "uvicorn.access",
    "uvicorn.asgi", "sqlalchemy", "alembic", "aiohttp", "asyncio", "py.warnings",
)

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The fields of a JSON line (then ``exc_info``/``stack_info`` when there are, and any extras).
JSON_FIELDS = ("asctime", "levelname", "name", "turn_id", "message")
JSON_RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}

LogFormat = Literal["text", "json"]


def _variants(secret: str) -> set[str]:
    """The secret as it may be written inside URLs, query strings and JSON."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote(secret, safe=":@/"),
             quote_plus(secret), quote_plus(secret, safe=":@"), json.dumps(secret)[1:-1]}
    # Some encoders write the hex digits in lower case (%3a rather than %3A).
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}
    return forms


class Masker:
    """Replaces every registered secret (and its encoded forms) with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Secrets shorter than 4 characters would mask ordinary words and digits.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        forms = {form for s in self.secrets for form in _variants(s) if len(form) >= 4}
        # Longest first, so a secret containing another is masked whole.
        alternatives = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, alternatives))) if forms else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)


class SecretMaskingFilter(logging.Filter):
    """Masks a record in place: its message, exception text and stack.

    Used on handlers and loggers we don't format ourselves (uvicorn's own handlers, pytest's
    caplog), so whichever formatter runs next only sees the masked text.
    """

    def __init__(self, secrets: Iterable[str] | Masker) -> None:
        super().__init__()
        self.masker = secrets if isinstance(secrets, Masker) else Masker(secrets)
        self.secrets = self.masker.secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        self._mask_message(record)
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so format it once here, masked.
            record.exc_text = _plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.masker(record.exc_text)
        if record.stack_info:
            record.stack_info = self.masker(record.stack_info)
        return True

    def _mask_message(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.masker(message) == message:
            return
        if record.args:
            # Mask the arguments one by one: some formatters read record.args themselves
            # (uvicorn's access log unpacks five of them).
            msg, args = record.msg, record.args
            record.msg = self.masker(msg) if isinstance(msg, str) else msg
            record.args = _masked_args(args, self.masker)
            try:
                if self.masker(record.getMessage()) == record.getMessage():
                    return
            except (TypeError, ValueError):
                pass
            record.msg, record.args = msg, args
        record.msg, record.args = self.masker(message), None


def _masked_args(args: tuple[object, ...] | Mapping[str, object],
                 masker: Masker) -> tuple[object, ...] | Mapping[str, object]:
    def one(value: object) -> object:
        return masker(value) if isinstance(value, str) else value

    if isinstance(args, dict):
        return {key: one(value) for key, value in args.items()}
    return tuple(one(value) for value in args)


_plain = logging.Formatter()


class TurnIdFilter(logging.Filter):
    """Stamps each record with the turn it was logged in (``record.turn_id``, None outside
    any). Handlers run in the logging call's thread and context, so the id is the caller's."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.turn_id = turn_id.get()
        return True


class MaskingFormatter(logging.Formatter):
    """Masks the whole formatted output, whatever a record carries (message, traceback, stack).

    A record logged inside a turn says so after the logger's name: ``name [turn tg-12]: …``."""

    def __init__(self, masker: Masker, fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self.masker = masker

    def format(self, record: logging.LogRecord) -> str:
        turn = getattr(record, "turn_id", None)
        if turn is None:
            return self.masker(super().format(record))
        name = record.name
        record.name = f"{name} [turn {turn}]"
        try:
            return self.masker(super().format(record))
        finally:
            record.name = name


class MaskingJsonFormatter(JsonFormatter):
    """One JSON object a line (``time``, ``level``, ``logger``, ``turn_id``, ``message``, then
    ``exc_info`` and extras), masked whole like the text lines: the masker knows each secret's
    JSON-escaped form too."""

    def __init__(self, masker: Masker) -> None:
        super().__init__(list(JSON_FIELDS), rename_fields=JSON_RENAMED)
        self.masker = masker

    def format(self, record: logging.LogRecord) -> str:
        return self.masker(super().format(record))


# The secrets of the last configure_logging call, for mask(); empty until then.
_masker = Masker()


def mask(text: str) -> str:
    """``text`` with every secret registered by :func:`configure_logging` masked."""
    return _masker(text)


def configure_logging(level: str, secrets: Iterable[str] = (), fmt: LogFormat = "text") -> None:
    """Every logger through one handler on stderr: ``fmt`` lines (``json``: one object a line),
    secrets masked, each record stamped with its turn id."""
    global _masker
    _masker = Masker(secrets)
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingJsonFormatter(_masker) if fmt == "json"
                         else MaskingFormatter(_masker))
    handler.addFilter(SecretMaskingFilter(_masker))
    handler.addFilter(TurnIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _route_libraries_to_root(_masker)
    logging.captureWarnings(True)  # warnings.warn(...) output goes through the same handler
    # Libraries that are chatty at INFO about things a bot operator doesn't need.
    for name in ("httpx", "faster_whisper", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def _route_libraries_to_root(masker: Masker) -> None:
    """Every library record reaches the one masking root handler, and only that one."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
        # Records logged on these loggers are masked before any handler sees them, even one
        # a library adds later (uvicorn's dictConfig replaces handlers but keeps filters).
        for old_filter in [f for f in logger.filters if isinstance(f, SecretMaskingFilter)]:
            logger.removeFilter(old_filter)
        if masker.secrets:
            logger.addFilter(SecretMaskingFilter(masker))


def _exc_info(kind: type[BaseException], value: BaseException | None,
              tb: TracebackType | None) -> tuple[type[BaseException], BaseException, TracebackType | None]:
    # The hooks' arguments allow a None exception, which logging's exc_info type does not; CPython
    # fills them from a caught exception, and logging formats the tuple as it is either way.
    return cast("tuple[type[BaseException], BaseException, TracebackType | None]", (kind, value, tb))


def route_uncaught_exceptions() -> None:
    """Uncaught exceptions (any thread) are logged through the masking handler.

    Python's default hooks print tracebacks to stderr as they are, secrets included.
    """
    crash = logging.getLogger("chatman.crash")

    def main_hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        crash.error("uncaught exception", exc_info=(kind, value, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        crash.error("uncaught exception in thread %s", name,
                    exc_info=_exc_info(args.exc_type, args.exc_value, args.exc_traceback))

    def unraisable_hook(unraisable: sys.UnraisableHookArgs) -> None:  # e.g. an exception in __del__
        crash.error("unraisable exception: %s", unraisable.err_msg or "in finaliser",
                    exc_info=_exc_info(unraisable.exc_type, unraisable.exc_value,
                                       unraisable.exc_traceback))

    sys.excepthook = main_hook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
