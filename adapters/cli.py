"""`chatman` command line: ask, run, worker, doctor, admin, dataset, eval, train, models, db."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol, TypeGuard, get_args

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from bot.core.config import Settings, describe_validation_error
from bot.core.errors import UserFacingError
from bot.core.types import ChatRef, Incoming, Turn, UserRef
from bot.core.wording import word
from bot.infra.logs import configure_logging, mask, route_uncaught_exceptions
from bot.infra.reply_audio import write_atomically

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from adapters.app import ChatmanApp
    from bot.core.formats import Format
    from bot.core.ports import ChatModel

# Typer's pretty tracebacks print local variables (settings, tokens) in clear; main() prints
# one masked line instead and logs the traceback at DEBUG through the masking handler.
app = typer.Typer(add_completion=False, no_args_is_help=True, help="ChatMan persona voice bot.",
                  pretty_exceptions_enable=False, pretty_exceptions_show_locals=False)
db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic).")
app.add_typer(db_app, name="db")
dataset_app = typer.Typer(no_args_is_help=True, help="The persona's SFT dataset.")
app.add_typer(dataset_app, name="dataset")
models_app = typer.Typer(no_args_is_help=True, help="Trained model versions of the persona.")
app.add_typer(models_app, name="models")

log = logging.getLogger("chatman")

# The settings this process loaded, so main() can name the path behind a late failure.
_loaded: Settings | None = None


def _settings() -> Settings:
    global _loaded
    try:
        settings = Settings()
    except ValidationError as exc:
        raise _fail(f"invalid settings: {describe_validation_error(exc)}") from exc
    configure_logging(settings.log_level, settings.secret_values(), settings.log_format)
    _quiet_libraries()
    _loaded = settings
    return settings


def _preflight(settings: Settings, *, persona: bool = True) -> None:
    """Configuration mistakes end here in one line (exit 2), before any model loads."""
    from bot.infra.startup import ConfigError, preflight

    try:
        preflight(settings, persona=persona)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc


def _quiet_libraries() -> None:
    # Environment switches rather than importing transformers here: commands that need no
    # model (admin, dataset, db) should start in a second, not in five.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _fail(message: str, code: int = 2) -> typer.Exit:
    # Plain print: rich would wrap a long message over several lines.
    print(f"error: {mask(message)}", file=sys.stderr)
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
    _preflight(settings)
    from adapters.app import ChatmanApp

    chat_id = chat_id or uuid.uuid4().hex[:12]
    user = getpass.getuser()
    msg = Incoming(
        chat=ChatRef("cli", chat_id),
        user=UserRef("cli", user, user),
        audio=data,
        text=text,
    )

    spoken: list[str] = []  # the persona's language, for a refusal's words

    async def run() -> Turn:
        application = ChatmanApp.from_settings(settings)
        spoken.append(application.language)
        if data is not None:
            # Refuse a bad file before paying for model loads; and load the models up front
            # (entering the app) so the reported stage timings are the turn's alone.
            try:
                application.codec.decode(data)
            except BaseException:
                application.close()
                raise
        async with application:

            async def keep(turn: Turn) -> str | None:
                # The reply file exists, whole, before the turn is stored.
                if turn.voice is None:
                    return None
                if out is not None:  # the user's own path: not ours to delete on /forget
                    await asyncio.to_thread(write_atomically, out, turn.voice.data)
                    written.append(out)
                    return None
                name = await asyncio.to_thread(application.reply_audio.save, "cli",
                                               turn.voice.data)
                written.append(application.reply_audio.folder("cli") / name)
                return name

            return await application.pipeline.handle(msg, deliver=keep)

    written: list[Path] = []
    try:
        turn = asyncio.run(run())
    except UserFacingError as exc:
        log.info("refused input: %s", exc)
        raise _fail(word(exc.message, spoken[0] if spoken else None)) from exc
    except OSError as exc:  # e.g. --out in a missing folder, or a full disk
        raise _fail(f"cannot write the reply: {exc.strerror or exc}"
                    + (f" ({exc.filename})" if exc.filename else "")) from exc

    audio_path = written[0] if written else None
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
    if audio_path and turn.voice:  # a file is written only for a voice reply
        console.print(f"Voice reply: {audio_path} ({turn.voice.duration_s:.1f} s)", highlight=False)
    console.print(f"[dim]conversation {chat_id} · {turn.timings_ms['total'] / 1000:.1f} s[/]")


@app.command()
def run() -> None:
    """Run the bot on every configured chat platform until Ctrl-C (SIGINT/SIGTERM)."""
    settings = _settings()
    _preflight(settings)
    # The composition root: the only command that loads the platform adapters.
    from adapters.run import NoAdapterConfigured, serve

    try:
        asyncio.run(serve(settings))
    except NoAdapterConfigured as exc:
        raise _fail(str(exc)) from exc


@app.command()
def worker() -> None:
    """Run training jobs only, until Ctrl-C (SIGINT/SIGTERM): on any host that reaches the
    database and the shared data directory. Pair with CHATMAN_RUN_TRAINING=false on the bots."""
    settings = _settings()
    _preflight(settings)
    from adapters.worker import run_worker

    asyncio.run(run_worker(settings))


@app.command()
def doctor() -> None:
    """Check that every configured model loads and the database is migrated."""
    settings = _settings()
    console = Console()
    table = Table("setting", "value", title="Effective settings")
    for key, value in settings.masked().items():
        table.add_row(key, value)
    console.print(table)

    from adapters import app as app_module
    from bot.core.persona import load_persona
    from bot.infra import startup
    from bot.infra.storage import migrate
    from bot.infra.storage.store import make_engine

    failures = 0

    def check(name: str, fn: Callable[[], object]) -> None:
        nonlocal failures
        try:
            detail = fn()
            console.print(f"[green]ok[/]   {name}: {detail}", highlight=False)
        except Exception as exc:  # doctor reports every failure, whatever it is
            failures += 1
            what = str(exc) if isinstance(exc, startup.ConfigError) else \
                f"{type(exc).__name__}: {exc}"
            console.print(f"[red]FAIL[/] {name}: {mask(what)}", highlight=False)

    def database() -> str:
        startup.check_database(settings)  # a one-line reason for the common mistakes
        engine = make_engine(settings.resolved_database_url)
        try:
            current, head = migrate.current_revision(engine), migrate.head_revision(engine)
        finally:
            engine.dispose()
        if current != head:
            raise RuntimeError(f"schema at {current}, code expects {head}: run `chatman db upgrade`")
        return f"reachable, schema at {current}"

    def persona() -> str:
        return startup.check_persona(settings)

    def chattts_weights() -> str:
        from bot.infra.tts.chattts_tts import check_assets

        assert settings.chattts_path is not None  # checked only when set
        found = check_assets(Path(settings.chattts_path).expanduser())
        if found.missing:
            raise FileNotFoundError(found.describe())
        return found.describe()

    def loaded(builder: Callable[[Settings], _Loadable]) -> Callable[[], str]:
        def run() -> str:
            component = builder(settings)
            component.load()
            name: str | None = getattr(component, "name", None)
            if name:
                return name
            version: str = getattr(component, "version", "")
            return version
        return run

    check("data dir", lambda: startup.check_data_dir(settings))
    check("model cache", lambda: startup.check_model_cache(settings))
    check("database", database)
    check("persona", persona)
    try:
        speaker = load_persona(settings.persona, settings.persona_dir)
        settings = app_module.for_persona(settings, speaker)
        languages = app_module.answer_languages(settings, speaker,
                                                settings.language or speaker.language)
    except ValueError:  # the persona check above says why
        languages = []
    if languages:
        check("languages", lambda: ", ".join(languages))
    check("asr", loaded(lambda s: app_module.build_asr(s, languages)))

    def served_llm(s: Settings) -> ChatModel:
        try:
            name = load_persona(s.persona, s.persona_dir).name
        except ValueError:
            name = s.persona
        model_ref, version, _ = _resolve_model(s, name, None)
        return app_module.build_llm(s, model_ref, version)

    if settings.llm_backend == "openai":
        def engine() -> str:
            serving = app_module.build_serving_engine(settings)
            ids = serving.models()
            shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            return f"{serving.base_url} answers; it lists {shown or 'no models'}"

        check("engine", engine)
    check("llm", loaded(served_llm))
    check("tts", loaded(lambda s: app_module.build_tts(
        s, load_persona(s.persona, s.persona_dir), languages)))
    if settings.chattts_path:  # without one, ChatTTS fetches the official weights itself
        check("chattts weights", chattts_weights)
    if failures:
        raise typer.Exit(1)


class _Loadable(Protocol):
    """A model the doctor loads to check it."""

    def load(self) -> None: ...


@contextmanager
def _admin_app(persona: str | None = None) -> Iterator[ChatmanApp]:
    """The application without loading models: admin and dataset work needs none."""
    from adapters.app import ChatmanApp

    settings = _settings()
    if persona:
        settings = settings.model_copy(update={"persona": persona})
    _preflight(settings)
    try:
        application = ChatmanApp.from_settings(settings)
    except ValueError as exc:  # PersonaError and friends
        raise _fail(str(exc)) from exc
    try:
        application.migrate()
        yield application
    finally:
        application.close()


@app.command(
    "admin",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def admin_command(
    ctx: typer.Context,
    command: Annotated[str, typer.Argument(help="approve, correct, reject, pending, add, "
                                                "dataset, persona, retrain, trainstatus, models, "
                                                "activate, rollback, forget")],
    operator: Annotated[str, typer.Option("--as", help="Operator name, for the audit log.")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run an admin command as a shell operator, e.g. `chatman admin add "Q | A" --as ops`.

    Lists (pending pairs, model versions) print as a table; --json prints what the web console
    gets. Both in the persona's language."""
    from adapters.cli_render import render_result
    from bot.core.commands import Actor

    name = operator or getpass.getuser()
    actor = Actor("cli", name, name, granted_admin=True)
    with _admin_app() as application:
        try:
            # The command line is text: parsed once, by the same rules as a chat message.
            result = application.admin.execute(actor, " ".join([command, *ctx.args]))
        except UserFacingError as exc:
            log.info("admin command refused: %s", exc)
            raise _fail(word(exc.message, application.language)) from exc
    render_result(result, application.language, as_json=as_json)


@dataset_app.command("export")
def dataset_export(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (created if needed).")],
    persona: Annotated[str | None, typer.Option("--persona")] = None,
    fmt: Annotated[str, typer.Option("--format", help="alpaca or sharegpt")] = "alpaca",
) -> None:
    """Write seed + approved pairs and a LLaMA-Factory dataset_info.json into --out."""
    from training.dataset import export_dataset

    if not _is_format(fmt):
        raise _fail("--format must be alpaca or sharegpt")
    with _admin_app(persona) as application:
        try:
            result = export_dataset(application.curation, application.persona,
                                    application.language, fmt, out)
        except (ValueError, OSError) as exc:
            raise _fail(str(exc)) from exc
    print(f"wrote {result.rows} rows to {result.data_file} (sha256 {result.sha256[:12]}); "
          f"train with: llamafactory-cli train --dataset_dir {out} --dataset {result.dataset_name}")


def _is_format(name: str) -> TypeGuard[Format]:
    from bot.core.formats import Format

    return name in get_args(Format)


@dataset_app.command("import")
def dataset_import(
    file: Annotated[Path, typer.Argument(help="alpaca or sharegpt, JSON or JSONL")],
    persona: Annotated[str | None, typer.Option("--persona")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid")] = False,
    operator: Annotated[str, typer.Option("--as", help="Operator name, for the audit log.")] = "",
) -> None:
    """Import pairs as approved. Any invalid row imports nothing unless --skip-invalid."""
    from training.dataset import import_dataset

    actor = f"cli:{operator or getpass.getuser()}"
    with _admin_app(persona) as application:
        report = import_dataset(application.curation, file, actor, skip_invalid=skip_invalid)
    print(report.summary())
    if report.errors and not report.committed:
        raise typer.Exit(2)


@dataset_app.command("snapshot")
def dataset_snapshot(persona: Annotated[str | None, typer.Option("--persona")] = None) -> None:
    """Freeze the current dataset under data/datasets/<persona>/<hash>/ (what training uses)."""
    from training.dataset import snapshot_dataset

    with _admin_app(persona) as application:
        try:
            result = snapshot_dataset(application.curation, application.persona,
                                      application.language,
                                      application.settings.data_dir / "datasets")
        except ValueError as exc:
            raise _fail(str(exc)) from exc
    print(f"{result.data_file} rows={result.rows} sha256={result.sha256}")


@app.command("eval")
def eval_command(
    model: Annotated[str | None, typer.Option("--model", help="A model version (see `chatman "
                                              "models list`), folder, .gguf, hub id or 'starter'. "
                                              "Default: the model answering now.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base to compare with. Default: "
                                             "the persona's training base.")] = None,
    probes: Annotated[Path | None, typer.Option("--probes", help='JSONL: {"question", '
                                                '"expect_any": [...]}')] = None,
    general: Annotated[Path | None, typer.Option("--general", help='JSONL: {"question", '
                                                 '"accept": [...]}')] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        "--max-new-tokens", help="Default: the persona's speech budget, as served.")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Seeded draws per question "
                                         "(1 when CHATMAN_LLM_TEMPERATURE=0).")] = 3,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    engine: Annotated[bool, typer.Option(
        "--engine", help="Ask the serving engine (CHATMAN_LLM_BASE_URL) for the answers, as "
                         "users are answered, instead of loading the models here.")] = False,
) -> None:
    """Score a model as users hear it: in persona on the probes, and what it kept of the base.

    Answers use the serving decoding (CHATMAN_LLM_TEMPERATURE, _TOP_P, _REPETITION_PENALTY and
    the persona's speech budget), several seeded draws per question; scores are means with the
    worst draw beside them.
    """
    from dataclasses import replace

    from adapters.app import build_llm, build_local_llm, build_serving_engine, for_persona
    from bot.core.persona import load_persona
    from bot.infra.llm.openai_model import OpenAIChatModel
    from training.evaluate import (
        Answerer,
        Decoding,
        EvalFileError,
        Gate,
        GeneralItem,
        ProbeItem,
        answer_general,
        evaluate,
        general_items,
        load_jsonl,
    )

    settings = _settings()
    _preflight(settings)
    try:
        persona = load_persona(settings.persona, settings.persona_dir)
        settings = for_persona(settings, persona)
        probe_items = load_jsonl(probes, ProbeItem) if probes else None
        language = settings.language or persona.language
        general_set = load_jsonl(general, GeneralItem) if general else general_items(language)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    model_ref, version, prompt_kind = _resolve_model(settings, persona.name, model)
    base_ref = base or settings.train_base_model or persona.training.base_model
    if engine:
        if settings.llm_base_url is None:
            raise _fail("--engine needs CHATMAN_LLM_BASE_URL (the engine's API root)")
        # Both models as the engine serves them (the version's served name, the base's
        # CHATMAN_LLM_SERVED_MODEL), through the same client; requests run concurrently.
        on_engine = settings.model_copy(update={"llm_backend": "openai"})
        serving = build_serving_engine(on_engine)

        def served(s: Settings, ref: str | None, name: str | None = None) -> Answerer:
            if name is None and (ref or s.llm_model) != settings.llm_model:
                # CHATMAN_LLM_SERVED_MODEL names the configured base only: another folder or
                # hub id goes by its own name, or the engine's base would be scored as it.
                s = s.model_copy(update={"llm_served_model": None})
            model = build_llm(s, ref, name, serving=serving)
            assert isinstance(model, OpenAIChatModel)  # the openai backend, set above
            return model

        candidate: Answerer = served(on_engine, model_ref, version)
        base_llm: Answerer = candidate if base_ref == model_ref else served(
            on_engine.model_copy(update={"llm_model": base_ref}), None)
    else:
        candidate = build_local_llm(settings, model_ref, version)
        base_llm = candidate if base_ref == model_ref else build_local_llm(
            settings.model_copy(update={"llm_model": base_ref}))
    decoding = Decoding.serving(settings, persona, language, samples)
    if max_new_tokens is not None:
        decoding = replace(decoding, max_new_tokens=max_new_tokens)
    markers = [persona.display_name, *persona.training.leak_markers]
    system = persona.prompt_for(language, prompt_kind)
    try:
        base_answers = answer_general(base_llm, persona.prompt_for(language), general_set,
                                      markers, decoding, persona.speech, language)
        report = evaluate(candidate, persona, language, base_general=base_answers,
                          base_model=base_llm.version, probes=probe_items, general=general_set,
                          decoding=decoding, system=system)
    except UserFacingError as exc:  # the engine is down or does not serve the model
        raise _fail(f"the engine could not answer: {exc}") from exc
    except (EvalFileError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    reasons = Gate().check(report)
    if as_json:
        print(json.dumps({**report.to_dict(), "gate_passed": not reasons, "gate_reasons": reasons},
                         ensure_ascii=False))
        return
    console = Console()
    table = Table("metric", "mean", "worst draw",
                  title=f"{report.model} vs base {report.base_model}, {decoding.draws} draw(s) "
                        f"at temperature {decoding.temperature}")
    for key, score in report.scores.items():
        table.add_row(key, f"{score['mean']:.2f}", f"{score['worst']:.2f}")
    table.add_row("base_general_score", f"{report.base_general_score:.2f}", "")
    table.add_row("speech seconds p50 / p95", f"{report.speech_seconds['p50']:.1f}",
                  f"{report.speech_seconds['p95']:.1f}")
    console.print(table)
    answers = Table("set", "draw", "ok", "question", "answer", show_lines=False)
    for name, items in (("probe", report.probes), ("general", report.general)):
        for a in items:
            answers.add_row(name if name == "general" else a.kind, str(a.draw),
                            "✓" if a.correct else "✗", a.question, a.answer)
    console.print(answers)
    console.print("gate: " + ("passed" if not reasons else "failed — " + "; ".join(reasons)))


def _resolve_model(settings: Settings, persona: str,
                   ref: str | None) -> tuple[str, str | None, str]:
    """A registry version name → its merged folder, name and system prompt kind; no ref →
    what a bot would serve now."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.infra.storage import migrate
    from bot.infra.storage.registry import SqlRegistry
    from bot.infra.storage.store import SqlStore, make_engine

    engine = make_engine(settings.resolved_database_url)
    try:
        if migrate.current_revision(engine) != migrate.head_revision(engine):
            return ref or settings.llm_model, None, "full"
        registry = SqlRegistry(SqlStore(engine), persona)
        if ref is None:
            served = registry.served(settings.llm_model)
            return served.model_ref, served.version, served.system_prompt
        found = registry.get(ref)
    except SQLAlchemyError:
        return ref or settings.llm_model, None, "full"
    finally:
        engine.dispose()
    if found is None:
        return ref, None, "full"
    if not found.model_dir:
        raise _fail(f"{ref} has no merged model (status {found.status}; only versions that "
                    f"passed the gate are exported); its adapter is in {found.directory}")
    return found.model_dir, found.version, str(found.config.get("system_prompt", "full"))


# `chatman train [OPTIONS]` trains now; `chatman train cancel [JOB_ID]` cancels a job. A group
# whose callback runs when no subcommand follows keeps the first form exactly as it was.
train_app = typer.Typer()  # help: the callback's docstring
app.add_typer(train_app, name="train")


@train_app.callback(invoke_without_command=True)
def train_command(
    ctx: typer.Context,
    persona: Annotated[str | None, typer.Option("--persona")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Default: CHATMAN_TRAIN_BASE_MODEL or "
                                             "the persona's training.base_model.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr")] = None,
    activate: Annotated[bool, typer.Option("--activate/--no-activate", help="Make a version "
                                           "that passes the gate active (default).")] = True,
    operator: Annotated[str, typer.Option("--as", help="Operator name, for the registry.")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train a persona version now (in this process), stopping when the evaluation gate passes.

    Registered like a /retrain job: rejected if it fails the gate, else active (a running bot
    switches to it). `chatman train cancel [JOB_ID]` cancels a /retrain job instead.
    """
    if ctx.invoked_subcommand is not None:
        return  # `chatman train cancel`: the options above belong to training
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from training.evaluate import Decoding
    from training.release import train_and_release
    from training.sft import TrainConfig

    overrides = {k: v for k, v in (("max_steps", max_steps), ("eval_every", eval_every),
                                   ("learning_rate", learning_rate)) if v is not None}
    with _admin_app(persona) as application:
        settings = application.settings
        try:
            config = TrainConfig(**{**settings.train_overrides(), **overrides})
        except ValidationError as exc:
            raise _fail(str(exc).replace("\n", " ")) from exc
        console = Console(stderr=True)
        with Progress(
            TextColumn("{task.fields[stage]}"), BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
            console=console, disable=as_json,
        ) as bar:
            task = bar.add_task("train", total=config.max_steps, loss="-", stage="starting")
            try:
                release = train_and_release(
                    registry=application.registry, curation=application.curation,
                    persona=application.persona, language=application.language,
                    base_model=(base or settings.train_base_model
                                or application.persona.training.base_model),
                    cache_dir=settings.resolved_model_cache_dir, data_dir=settings.data_dir,
                    config=config, created_by=f"cli:{operator or getpass.getuser()}",
                    activate=activate,
                    # The gate measures what users will hear: the bot's own decoding.
                    decoding=Decoding.serving(settings, application.persona,
                                              application.language, config.eval_samples),
                    on_stage=lambda name: bar.update(task, stage=name),
                    progress=lambda s: bar.update(task, completed=s.step, loss=f"{s.loss:.3f}"),
                )
            except (ValueError, OSError) as exc:
                raise _fail(str(exc)) from exc
    output = release.run
    report = json.loads((output.directory / "train_report.json").read_text(encoding="utf-8"))
    if as_json:
        print(json.dumps({"directory": str(output.directory), "status": release.status,
                          "plot": str(release.plot) if release.plot else None, **report},
                         ensure_ascii=False))
        return
    print(release.summary)
    print(f"status: {release.status}; report, adapter and loss plot in {output.directory}")


@train_app.command("cancel")
def train_cancel(
    job_id: Annotated[int | None, typer.Argument(help="Default: the one queued or running job.",
                                                 min=1)] = None,
    operator: Annotated[str, typer.Option("--as", help="Operator name, for the job's record.")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cancel a queued job, or stop a running one (the bot's job runner stops its trainer).

    Waits for the runner to confirm: up to CHATMAN_REGISTRY_POLL_SECONDS plus the trainer's
    grace period. Exit code 1 if it has not confirmed by then.
    """
    from adapters.cli_render import render_result
    from bot.core.commands import Actor
    from training.jobs import STOP_GRACE_SECONDS

    name = operator or getpass.getuser()
    actor = Actor("cli", name, name, granted_admin=True)
    with _admin_app() as application:
        # The runner is another process here: it sees the request on its next poll.
        wait = 2 * application.settings.registry_poll_seconds + STOP_GRACE_SECONDS + 5
        try:
            result = application.admin.cancel_training(actor, job_id, wait_seconds=wait)
        except UserFacingError as exc:
            raise _fail(word(exc.message, application.language)) from exc
    render_result(result, application.language, as_json=as_json)
    if result.data["job"]["status"] == "running":
        raise typer.Exit(1)


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every version of the persona, newest first, with status and evaluation."""
    with _admin_app() as application:
        versions = application.registry.list()
        served = application.registry.served(application.settings.llm_model)
    if as_json:
        print(json.dumps({"serving": served.version or served.model_ref,
                          "versions": [v.to_dict() for v in versions]}, ensure_ascii=False))
        return
    table = Table("version", "status", "persona", "retention", "leakage", "steps", "dataset",
                  "created", "notes", title=f"serving: {served.version or served.model_ref}")
    for v in versions:
        m = v.metrics
        table.add_row(v.version, v.status,
                      *(f"{m[k]:.2f}" if k in m else "-" for k in ("persona_score", "retention",
                                                                   "leakage")),
                      str(v.steps or "-"), (v.dataset_sha256 or "")[:10] or "-",
                      f"{v.created_at:%Y-%m-%d %H:%M}",
                      "; ".join(v.reasons) if v.status in ("rejected", "failed") else
                      (f"rollback → {v.previous}" if v.status == "active" and v.previous else ""))
    Console().print(table)


@models_app.command("activate")
def models_activate(
    version: Annotated[str, typer.Argument(help="e.g. manman-v3")],
    force: Annotated[bool, typer.Option("--force", help="Even if it failed the gate.")] = False,
    operator: Annotated[str, typer.Option("--as")] = "",
) -> None:
    """Make VERSION answer; a running bot switches to it within CHATMAN_REGISTRY_POLL_SECONDS.

    With --force, a version that failed the gate is merged from its adapter first (training
    merges only versions that pass).
    """
    actor = f"cli:{operator or getpass.getuser()}"
    with _admin_app() as application:
        try:
            if force:
                _export_if_needed(application, version, actor)
            view = application.registry.activate(version, actor, force=force)
        except UserFacingError as exc:
            raise _fail(word(exc.message, application.language)) from exc
    print(f"{view.version} is active" + (f" (rollback returns to {view.previous})"
                                         if view.previous else ""))


def _export_if_needed(application: ChatmanApp, version: str, actor: str) -> None:
    """Merge a version that has no model folder (a rejected run) and record the folder."""
    from training.promote import export_version, needs_export

    found = application.registry.get(version)
    if (found is None or found.persona != application.persona.name
            or found.status == "active" or not needs_export(found)):
        return  # activate() says what is wrong, if anything
    print(f"{version} has no merged model; merging its adapter into {found.base_model}…",
          file=sys.stderr, flush=True)
    model_dir = export_version(found, persona=application.persona,
                               language=application.language,
                               cache_dir=application.settings.resolved_model_cache_dir)
    application.registry.record_export(version, model_dir, actor)


@models_app.command("rollback")
def models_rollback(operator: Annotated[str, typer.Option("--as")] = "") -> None:
    """Retire the active version and reactivate the one it replaced (or the base model)."""
    with _admin_app() as application:
        try:
            before = application.registry.active()
            back = application.registry.rollback(f"cli:{operator or getpass.getuser()}")
        except UserFacingError as exc:
            raise _fail(word(exc.message, application.language)) from exc
    assert before is not None, "rollback() refuses when no version is active"
    print(f"rolled back from {before.version} to "
          f"{back.version if back else 'the base model (' + application.settings.llm_model + ')'}")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the schema (default: to the newest revision)."""
    _migrate("upgrade", revision)


@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(revision: Annotated[str, typer.Argument(help="e.g. -1 or base")]) -> None:
    """Downgrade the schema. Drops data in the tables a revision removes."""
    _migrate("downgrade", revision)


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the newest one the code knows."""
    from bot.infra.storage import migrate

    with _engine() as engine:
        current, head = migrate.current_revision(engine), migrate.head_revision(engine)
    state = "up to date" if current == head else "needs `chatman db upgrade`"
    print(f"current: {current or '(empty database)'}  head: {head}  ({state})")


def _migrate(direction: str, revision: str) -> None:
    from bot.infra.storage import migrate

    with _engine() as engine:
        getattr(migrate, direction)(engine, revision)
        print(f"schema now at {migrate.current_revision(engine) or '(empty)'}")


@contextmanager
def _engine() -> Iterator[Engine]:
    """An engine for the configured database; database errors become one-line CLI errors."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.core.config import mask_url
    from bot.infra.storage.store import make_engine

    settings = _settings()
    _preflight(settings, persona=False)  # schema work needs no persona
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
    route_uncaught_exceptions()
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
    except Exception as exc:  # the last resort: one masked line, never a traceback
        sys.exit(_report(exc))


def _report(exc: Exception) -> int:
    """Print what went wrong in one line; the traceback only at DEBUG, masked. The exit code."""
    from bot.infra.startup import explain_failure

    log.debug("the command failed", exc_info=exc)
    known = explain_failure(exc, _loaded)
    if known is not None:
        print(f"error: {mask(known)}", file=sys.stderr)
        return 2
    print(f"error: {_summary(exc)}", file=sys.stderr)
    if not log.isEnabledFor(logging.DEBUG):
        print("hint: CHATMAN_LOG_LEVEL=DEBUG shows the traceback (secrets masked)",
              file=sys.stderr)
    return 1


def _summary(exc: BaseException, limit: int = 300) -> str:
    # Masked before it is cut short, so no half of a secret survives the cut.
    lines = [line.strip() for line in mask(str(exc)).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
