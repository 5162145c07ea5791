"""Cheap start-up checks that turn configuration mistakes into one-line messages.

:func:`preflight` runs before a command opens the app or the database, and loads no model:
a data folder that can't be written, a corrupt SQLite file, a database URL that doesn't
parse or doesn't connect, or a missing persona each become a :class:`ConfigError` that names
the setting or path and says what to do, instead of a traceback hundreds of lines long.
:func:`explain_failure` does the same for those causes when they only show up later.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from bot.core.config import Settings, mask_url
from bot.infra.logs import mask

log = logging.getLogger(__name__)

#: How long a server database may take to answer before preflight gives up (seconds).
CONNECT_TIMEOUT_S = 10

_DB_HINT = "set CHATMAN_DATABASE_URL"


class ConfigError(Exception):
    """A configuration mistake; the message is one line saying what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(mask(" ".join(message.split())))


def preflight(settings: Settings, *, persona: bool = True) -> None:
    """Raise :class:`ConfigError` for the first mistake found; ``persona=False`` skips it."""
    check_data_dir(settings)
    check_model_cache(settings)
    check_database(settings)
    if persona:
        check_persona(settings)


# --- folders --------------------------------------------------------------------------
def check_data_dir(settings: Settings) -> str:
    _writable_dir(settings.data_dir, "CHATMAN_DATA_DIR")
    return f"{settings.data_dir.resolve()} is writable"


def check_model_cache(settings: Settings) -> str:
    """The cache must exist or be creatable; inside the data dir it is covered already.

    An existing read-only cache only gets a warning: one filled in advance (a read-only
    volume, an image) serves fine, and only a model that still needs converting writes there.
    """
    cache = settings.model_cache_dir
    if cache is None or _inside(cache, settings.data_dir):
        return f"{settings.resolved_model_cache_dir.resolve()} (in the data dir)"
    if cache.is_dir():
        if not os.access(cache, os.W_OK | os.X_OK):
            log.warning("CHATMAN_MODEL_CACHE_DIR=%s is read-only: a model that needs "
                        "converting (a .gguf file) will fail to load", cache)
            return f"{cache.resolve()} (read-only)"
        return f"{cache.resolve()} is writable"
    _writable_dir(cache, "CHATMAN_MODEL_CACHE_DIR")
    return f"{cache.resolve()} is writable"


def _writable_dir(path: Path, setting: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Creating a file is the only test that holds for root and read-only mounts alike.
        fd, probe = tempfile.mkstemp(prefix=".chatman-preflight-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{setting}={_shown(path)} is not writable ({_why_not(path, exc)}): "
                          f"point {setting} at a writable folder") from exc


def _why_not(path: Path, exc: OSError) -> str:
    blocker = _file_in_the_way(path)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    return exc.strerror or str(exc)


def _file_in_the_way(path: Path) -> Path | None:
    """``path`` or the first of its parents that exists as something other than a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _shown(path: Path) -> str:
    return str(path) if path.is_absolute() else f"{path} ({path.resolve()})"


# --- database -------------------------------------------------------------------------
def check_database(settings: Settings) -> str:
    """The URL parses, and the database opens and answers a read (and, for SQLite, a write)."""
    url = _parsed_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        return _check_sqlite(url)
    return _check_server(url)


def _parsed_url(text: str) -> URL:
    try:
        return make_url(text)
    except Exception:  # ArgumentError, or ValueError for a port that isn't a number
        # Not echoed: a URL that doesn't parse can't have its password masked.
        raise ConfigError("CHATMAN_DATABASE_URL is not a database URL: write it like "
                          "postgresql+psycopg://user:password@host:5432/chatman") from None


def _check_sqlite(url: URL) -> str:
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        return "in-memory SQLite"
    path = Path(url.database)
    if path.is_dir():
        raise ConfigError(f"the SQLite database {path} is a folder: {_DB_HINT} to a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder of the SQLite database {path} "
                          f"({_why_not(path.parent, exc)}): {_DB_HINT}") from exc
    try:
        _probe_sqlite(path)
    except sqlite3.Error as exc:
        raise ConfigError(sqlite_problem(path, str(exc))) from exc
    return f"SQLite {path}"


def _probe_sqlite(path: Path) -> None:
    # Autocommit mode, so the write probe below is the only transaction and is rolled back.
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        # A read-only file opens and reads fine; only a write shows it (root included).
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE _chatman_preflight (x INTEGER)")
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


def sqlite_problem(path: Path | str, reason: str) -> str:
    """What to do about a SQLite error ``reason`` on the database file ``path``."""
    reason = _first_line(reason)
    if "not a database" in reason or "malformed" in reason:
        return (f"the SQLite database {path} is not a database ({reason}): "
                f"move it aside or {_DB_HINT}")
    if "readonly" in reason or "read-only" in reason:
        return (f"the SQLite database {path} is read-only ({reason}): make the file and its "
                f"folder writable or {_DB_HINT}")
    if "locked" in reason:
        return f"the SQLite database {path} is locked ({reason}): is another process using it?"
    return f"cannot open the SQLite database {path} ({reason}): check the file and its folder, " \
           f"or {_DB_HINT}"


def _check_server(url: URL) -> str:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    shown = url.render_as_string(hide_password=True)
    connect_args = ({"connect_timeout": CONNECT_TIMEOUT_S}
                    if url.get_backend_name() == "postgresql" else {})
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except (ImportError, SQLAlchemyError) as exc:  # unknown dialect, driver not installed
        raise ConfigError(f"CHATMAN_DATABASE_URL={shown}: no driver for {url.drivername} "
                          f"({_first_line(str(exc))}): use postgresql+psycopg://… or "
                          "sqlite:///…") from exc
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot connect to the database {shown}: {_driver_reason(exc)}: "
                          "check the server, or CHATMAN_DATABASE_URL") from exc
    finally:
        engine.dispose()
    return f"{shown} answers"


# --- persona --------------------------------------------------------------------------
def check_persona(settings: Settings) -> str:
    from bot.core.persona import load_persona

    try:
        persona = load_persona(settings.persona, settings.persona_dir)
        language = settings.language or persona.language
        persona.prompt_for(language)
    except ValueError as exc:  # PersonaError, and pydantic's errors about the YAML
        where = f"CHATMAN_PERSONA={settings.persona}"
        if settings.persona_dir is not None:
            where += f" in CHATMAN_PERSONA_DIR={settings.persona_dir}"
        if settings.language:
            where += f" with CHATMAN_LANGUAGE={settings.language}"
        raise ConfigError(f"{where}: {exc}: fix the persona, or set CHATMAN_PERSONA "
                          "(and CHATMAN_PERSONA_DIR) to one that loads") from exc
    return f"{persona.display_name} ({language})"


# --- after start-up -------------------------------------------------------------------
def explain_failure(exc: BaseException, settings: Settings | None) -> str | None:
    """A one-line message for a known configuration cause of ``exc``, else None."""
    if isinstance(exc, ConfigError):
        return str(exc)
    refused = _refused_token(exc)
    if refused is not None:
        return refused
    if isinstance(exc, SQLAlchemyError) and settings is not None:
        return _database_problem(exc, settings)
    if isinstance(exc, OSError) and exc.filename:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return mask(f"cannot use {exc.filename} ({reason}): check that path and its "
                    "permissions (CHATMAN_DATA_DIR, CHATMAN_MODEL_CACHE_DIR, "
                    "CHATMAN_PERSONA_DIR)")
    if isinstance(exc, PermissionError):
        return mask(f"permission denied ({_first_line(str(exc))}): check CHATMAN_DATA_DIR "
                    "and CHATMAN_MODEL_CACHE_DIR are writable")
    return None


#: Platform exceptions that mean "this bot token was refused", by module and class name: the
#: core never imports a chat platform library.
_TOKEN_REFUSALS = {
    ("telegram.error", "InvalidToken"): "TELEGRAM_BOT_TOKEN",
    ("discord.errors", "LoginFailure"): "DISCORD_BOT_TOKEN",
}


def _refused_token(exc: BaseException) -> str | None:
    variable = _TOKEN_REFUSALS.get((type(exc).__module__, type(exc).__name__))
    if variable is None:
        return None
    return (f"{variable} was refused ({_first_line(str(exc))}): set {variable} to the token "
            "the platform gave the bot")


def _database_problem(exc: SQLAlchemyError, settings: Settings) -> str | None:
    from sqlalchemy.exc import DatabaseError, OperationalError

    if not isinstance(exc, (DatabaseError, OperationalError)):
        return None
    try:
        url = make_url(settings.resolved_database_url)
    except Exception:
        return None
    if url.get_backend_name() == "sqlite" and url.database:
        return mask(sqlite_problem(url.database, _driver_reason(exc)))
    return mask(f"database {mask_url(settings.resolved_database_url)}: {_driver_reason(exc)}")


def _driver_reason(exc: SQLAlchemyError) -> str:
    return _first_line(str(getattr(exc, "orig", None) or exc))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return mask(lines[0] if lines else "")
