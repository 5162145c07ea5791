"""`chatman` command line: ask, doctor, db."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from bot.config import Settings
from bot.errors import UserFacingError
from bot.logs import configure_logging
from bot.types import ChatRef, Incoming, UserRef

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ChatMan persona voice bot.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic).")
app.add_typer(db_app, name="db")

log = logging.getLogger("chatman")


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise _fail(f"invalid settings: {exc}".replace("\n", " ")) from exc
    configure_logging(settings.log_level, settings.secret_values())
    _quiet_libraries()
    return settings


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _fail(message: str, code: int = 2) -> typer.Exit:
    # Plain print: rich would wrap a long message over several lines.
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


@app.command()
def ask(
    audio: Annotated[Path | None, typer.Option("--audio", help="A voice note or audio file.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Ask in text instead.")] = None,
    chat_id: Annotated[str | None, typer.Option("--chat-id", help="Continue this conversation.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the OGG/Opus reply.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """One turn of the full pipeline (platform `cli`)."""
    if (audio is None) == (text is None):
        raise _fail("give exactly one of --audio PATH or --text TEXT")
    data = None
    if audio is not None:
        try:
            data = audio.read_bytes()
        except OSError as exc:
            raise _fail(f"cannot read {audio}: {exc.strerror or exc}") from exc
    settings = _settings()
    from bot.app import ChatmanApp

    chat_id = chat_id or uuid.uuid4().hex[:12]
    user = getpass.getuser()
    msg = Incoming(
        chat=ChatRef("cli", chat_id),
        user=UserRef("cli", user, user),
        audio=data,
        text=text,
    )

    async def run():
        application = ChatmanApp.from_settings(settings)
        try:
            if data is not None:
                # Refuse a bad file before paying for model loads; and load the models
                # up front so the reported stage timings are the turn's alone.
                application.codec.decode(data)
            await application.start()
            return await application.pipeline.handle(msg)
        finally:
            application.close()

    try:
        turn = asyncio.run(run())
    except UserFacingError as exc:
        log.info("refused input: %s", exc)
        raise _fail(exc.user_message) from exc

    audio_path = None
    if turn.voice is not None:
        audio_path = out or settings.data_dir / "replies" / f"reply-{turn.exchange_id}.ogg"
        audio_path.parent.mkdir(parents=True, exist_ok=True)
        audio_path.write_bytes(turn.voice.data)
    if as_json:
        print(json.dumps({
            "chat_id": chat_id,
            "exchange_id": turn.exchange_id,
            "transcript": turn.transcript,
            "language": turn.language,
            "reply": turn.reply,
            "audio": str(audio_path) if audio_path else None,
            "duration_s": turn.voice.duration_s if turn.voice else None,
            "model_version": turn.model_version,
            "timings_ms": turn.timings_ms,
        }, ensure_ascii=False))
        return
    console = Console()
    console.print(f"[bold]You[/]: {turn.transcript}", highlight=False)
    console.print(f"[bold]Persona[/]: {turn.reply}", highlight=False)
    if audio_path:
        console.print(f"Voice reply: {audio_path} ({turn.voice.duration_s:.1f} s)", highlight=False)
    console.print(f"[dim]conversation {chat_id} · {turn.timings_ms['total'] / 1000:.1f} s[/]")


@app.command()
def doctor() -> None:
    """Check that every configured model loads and the database is migrated."""
    settings = _settings()
    console = Console()
    table = Table("setting", "value", title="Effective settings")
    for key, value in settings.masked().items():
        table.add_row(key, value)
    console.print(table)

    from bot import app as app_module
    from bot.persona import load_persona
    from bot.storage import migrate
    from bot.storage.store import make_engine

    failures = 0

    def check(name: str, fn) -> None:
        nonlocal failures
        try:
            detail = fn()
            console.print(f"[green]ok[/]   {name}: {detail}", highlight=False)
        except Exception as exc:  # doctor reports every failure, whatever it is
            failures += 1
            console.print(f"[red]FAIL[/] {name}: {type(exc).__name__}: {exc}", highlight=False)

    def database() -> str:
        engine = make_engine(settings.resolved_database_url)
        try:
            current, head = migrate.current_revision(engine), migrate.head_revision(engine)
        finally:
            engine.dispose()
        if current != head:
            raise RuntimeError(f"schema at {current}, code expects {head}: run `chatman db upgrade`")
        return f"reachable, schema at {current}"

    def persona() -> str:
        p = load_persona(settings.persona, settings.persona_dir)
        language = settings.language or p.language
        p.prompt_for(language)
        return f"{p.display_name} ({language})"

    def loaded(builder):
        def run() -> str:
            component = builder(settings)
            component.load()
            return getattr(component, "name", None) or getattr(component, "version", "")
        return run

    check("database", database)
    check("persona", persona)
    check("asr", loaded(app_module.build_asr))
    check("llm", loaded(app_module.build_llm))
    check("tts", loaded(app_module.build_tts))
    if failures:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the schema (default: to the newest revision)."""
    _migrate("upgrade", revision)


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="e.g. -1 or base")]) -> None:
    """Downgrade the schema. Drops data in the tables a revision removes."""
    _migrate("downgrade", revision)


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the newest one the code knows."""
    from bot.storage import migrate

    with _engine() as engine:
        current, head = migrate.current_revision(engine), migrate.head_revision(engine)
    state = "up to date" if current == head else "needs `chatman db upgrade`"
    print(f"current: {current or '(empty database)'}  head: {head}  ({state})")


def _migrate(direction: str, revision: str) -> None:
    from bot.storage import migrate

    with _engine() as engine:
        getattr(migrate, direction)(engine, revision)
        print(f"schema now at {migrate.current_revision(engine) or '(empty)'}")


@contextmanager
def _engine():
    """An engine for the configured database; database errors become one-line CLI errors."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.config import mask_url
    from bot.storage.store import make_engine

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        yield engine
    except SQLAlchemyError as exc:
        log.debug("database error", exc_info=True)
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise _fail(f"database {mask_url(settings.resolved_database_url)}: {reason}", 1) from exc
    finally:
        engine.dispose()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
