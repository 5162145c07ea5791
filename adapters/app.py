"""The composition root: every component, built once from settings and injected.

Only this module (with ``adapters/run.py``, which adds the chat platforms, and the training
worker's own entry point) names concrete infrastructure: SQL repositories, model backends,
the trainer. Services see ports (``bot/core/ports.py`` and the repositories' Protocols).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

from sqlalchemy.engine import Engine

from bot.core.config import STARTER, Settings, starter_for
from bot.core.curation import CurationRepository
from bot.core.errors import EngineUnavailable
from bot.core.jobs import JobRepository, Notice, Notify
from bot.core.language import base_language
from bot.core.notices import NoticeOutbox
from bot.core.persona import PersonaProfile, load_persona
from bot.core.ports import AudioCodec, ChatModel, SpeechRecognizer, SpeechSynthesizer
from bot.core.registry import ModelStatus, RegistryRepository, Served
from bot.core.speech_budget import SpeechBudget
from bot.core.types import ChatRef
from bot.infra.asr import FasterWhisperASR
from bot.infra.audio.codec import PyAvCodec
from bot.infra.audio.isolated import IsolatedDecoder
from bot.infra.llm.chat_model import GenerationSettings, TransformersChatModel
from bot.infra.llm.openai_model import OpenAIChatModel, ServingEngine
from bot.infra.llm.served import ServedNames
from bot.infra.metrics import PrometheusMetrics, Sources
from bot.infra.reply_audio import ReplyAudioStore
from bot.infra.storage import migrate
from bot.infra.storage.curation import SqlCuration
from bot.infra.storage.inbox import SqlInbox
from bot.infra.storage.jobs import SqlJobQueue
from bot.infra.storage.notices import SqlNoticeOutbox
from bot.infra.storage.registry import SqlRegistry
from bot.infra.storage.store import SqlStore, make_engine
from bot.infra.tts.by_language import VoiceByLanguage
from bot.infra.tts.chattts_tts import ChatTTSSpeech, ChatTTSVoice
from bot.infra.tts.fallback import FallbackSpeech
from bot.infra.tts.fastspeech_tts import FastSpeechTTS, zh_voice_ready
from bot.infra.tts.piper_tts import PiperTTS
from bot.services.admin import AdminService
from bot.services.chat_queue import ChatQueues
from bot.services.inbox_worker import InboxWorker
from bot.services.model_switch import ModelSwitcher
from bot.services.notice_relay import NoticeRelay
from bot.services.pipeline import DECODE_WORKERS, PipelineConfig, VoicePipeline
from training.jobs import TrainingRunner, training_key

log = logging.getLogger(__name__)


def build_asr(s: Settings, languages: Sequence[str] = ()) -> SpeechRecognizer:
    """``languages``: those turns are answered in; a voice note's language is detected among
    them (unless CHATMAN_ASR_LANGUAGE fixes it)."""
    return FasterWhisperASR(
        s.asr_model,
        device=s.asr_device,
        compute_type=s.asr_compute_type,
        language=s.asr_language,
        languages=languages,
        vad=s.asr_vad,
        beam_size=s.asr_beam_size,
    )


def reply_token_cap(s: Settings, persona: PersonaProfile | None, language: str) -> int:
    """CHATMAN_LLM_MAX_NEW_TOKENS, or what the persona's speech budget allows."""
    if s.llm_max_new_tokens is not None:
        return s.llm_max_new_tokens
    return (persona.speech if persona else SpeechBudget()).max_new_tokens(language)


def for_persona(s: Settings, persona: PersonaProfile) -> Settings:
    """The settings as this persona runs with them: a Chinese persona's ``starter`` LLM (to
    serve and to train on) is the Chinese-speaking starter (:func:`starter_for`)."""
    language = s.language or persona.language
    update: dict[str, str] = {}
    if (llm := starter_for(s.llm_model, language)) != s.llm_model:
        update["llm_model"] = llm
    base = s.train_base_model or persona.training.base_model
    if (trained := starter_for(base, language)) != base:
        update["train_base_model"] = trained
    return s.model_copy(update=update) if update else s


def answer_languages(s: Settings, persona: PersonaProfile, default: str) -> list[str]:
    """The languages turns are answered in (CHATMAN_LANGUAGES, else every one the persona
    has a prompt in, unless the model is the English starter, which speaks English only),
    ``default`` first; each must have a prompt (PersonaError)."""
    spoken = persona.languages if s.llm_model != STARTER else [default]
    chosen = [lang for lang in (s.language_list or spoken) if lang != default]
    languages = [default, *chosen]
    persona.prompts(languages)  # raises, naming the language without a prompt
    return languages


def generation_settings(s: Settings, max_new_tokens: int | None = None) -> GenerationSettings:
    """The serving decoding (``max_new_tokens``: the reply cap, see :func:`reply_token_cap`;
    without it, the setting's or the default speech budget's English cap)."""
    return GenerationSettings(
        max_new_tokens=max_new_tokens or reply_token_cap(s, None, "en"),
        temperature=s.llm_temperature,
        top_p=s.llm_top_p,
        repetition_penalty=s.llm_repetition_penalty,
        seed=s.llm_seed,
    )


def build_local_llm(s: Settings, model_ref: str | None = None, version: str | None = None,
                    max_new_tokens: int | None = None) -> TransformersChatModel:
    """The LLM in this process, whatever CHATMAN_LLM_BACKEND says: evaluation and the gate
    batch and seed their answers themselves (``answer_many``)."""
    return TransformersChatModel(
        model_ref or s.llm_model,
        version=version,
        cache_dir=s.resolved_model_cache_dir,
        device=s.llm_device,
        dtype=s.llm_dtype,
        generation=generation_settings(s, max_new_tokens),
        context_tokens=s.llm_context_tokens,
        batch_window_ms=s.llm_batch_window_ms,
        max_batch=s.llm_max_batch,
    )


def build_serving_engine(s: Settings) -> ServingEngine:
    """The OpenAI-compatible engine at CHATMAN_LLM_BASE_URL (one client for every version)."""
    assert s.llm_base_url is not None  # Settings refuses the openai backend without one
    return ServingEngine(s.llm_base_url,
                         api_key=s.llm_api_key.get_secret_value() if s.llm_api_key else None,
                         timeout=s.llm_timeout_seconds, retries=s.llm_retries)


def build_llm(s: Settings, model_ref: str | None = None, version: str | None = None,
              max_new_tokens: int | None = None, *,
              serving: ServingEngine | None = None) -> ChatModel:
    """The configured LLM (CHATMAN_LLM_BACKEND), or ``model_ref`` (a registry version's folder)
    named ``version``. ``serving``: the engine client to share (the application's), else a new
    one."""
    if s.llm_backend == "transformers":
        return build_local_llm(s, model_ref, version, max_new_tokens)
    return OpenAIChatModel(
        model_ref or s.llm_model,
        version=version,
        engine=serving or build_serving_engine(s),
        names=ServedNames(cache_dir=s.resolved_model_cache_dir, served_model=s.llm_served_model,
                          served_versions=s.served_versions, lora_adapters=s.llm_lora_adapters),
        generation=generation_settings(s, max_new_tokens),
        context_tokens=s.llm_context_tokens,
    )


def build_tts(s: Settings, persona: PersonaProfile | None = None,
              languages: Sequence[str] = ()) -> SpeechSynthesizer:
    """The configured backend; ChatTTS falls back to Piper unless CHATMAN_TTS_FALLBACK=false.
    ``languages``: those replies are spoken in (ChatTTS speaks both zh and en; Piper's voice
    is chosen per language, see :func:`build_voices`)."""
    piper = build_voices(s, persona, languages)
    if s.tts_backend == "piper":
        return piper
    voice = ChatTTSVoice.from_persona((persona.voice.get("chattts") if persona else None) or {})
    speaker_dirs = [persona.directory] if persona and persona.directory else []
    speaker_dirs.append(s.data_dir / "voices" / (persona.name if persona else "default"))
    chattts = ChatTTSSpeech(s.chattts_path, voice, speaker_dirs=speaker_dirs, device=s.tts_device)
    return FallbackSpeech(chattts, piper) if s.tts_fallback else chattts


def build_piper(s: Settings, persona: PersonaProfile | None = None) -> PiperTTS:
    """The persona's voice settings apply unless the environment sets them explicitly."""
    voice, speed = s.tts_voice, s.tts_speed
    own = (persona.voice.get("piper") if persona else None) or {}
    if "tts_voice" not in s.model_fields_set and own.get("voice"):
        voice = str(own["voice"])
        if voice != STARTER and persona is not None and persona.directory is not None:
            voice = str((persona.directory / voice).resolve())
    if "tts_speed" not in s.model_fields_set and own.get("speed"):
        speed = float(own["speed"])
    return PiperTTS(voice, device=s.tts_device, speed=speed)


def build_voices(s: Settings, persona: PersonaProfile | None,
                 languages: Sequence[str]) -> SpeechSynthesizer:
    """The Piper voice (CHATMAN_TTS_VOICE, or the persona's), and a voice of its own for each
    of ``languages`` that CHATMAN_TTS_VOICES names or has a starter voice installed: the
    Chinese starter (``make setup LANGS=en,zh``) speaks zh replies."""
    default = build_piper(s, persona)
    explicit = {base_language(k): v for k, v in s.voices_by_language.items()}
    voices: dict[str, SpeechSynthesizer] = {}
    for lang in dict.fromkeys([*(base_language(x) for x in languages), *explicit]):
        ref = explicit.get(lang, STARTER)
        if ref == STARTER and lang == "zh":
            if not zh_voice_ready():
                # Info, not a warning: an English install answers typed Chinese this way too.
                log.info("no Chinese voice built (make setup LANGS=en,zh, or set "
                         "CHATMAN_TTS_VOICES=zh=<piper voice>.onnx): zh replies get %s",
                         default.name)
                continue
            voices[lang] = FastSpeechTTS(speed=s.tts_speed)
        elif ref != STARTER:
            voices[lang] = PiperTTS(ref, device=s.tts_device, speed=s.tts_speed)
    return VoiceByLanguage(voices, default) if voices else default


class AppState(StrEnum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    CLOSED = "closed"


class LifecycleError(RuntimeError):
    """The application was used out of order (started twice, closed while running...)."""


@dataclass
class ChatmanApp:
    """The wired application with a guarded lifecycle: NEW → (start) RUNNING → (stop)
    STOPPED → (close) CLOSED. ``async with app.running(...)`` (or ``async with app``) does all
    three; starting twice, or closing while background work runs, is a LifecycleError."""

    settings: Settings
    persona: PersonaProfile
    engine: Engine
    store: SqlStore
    codec: AudioCodec
    asr: SpeechRecognizer
    tts: SpeechSynthesizer
    pipeline: VoicePipeline
    curation: CurationRepository
    admin: AdminService
    language: str
    registry: RegistryRepository
    jobs: JobRepository
    models: ModelSwitcher
    # Every adapter's per-chat order (the bounds for everybody are in the pipeline).
    queues: ChatQueues
    # Reply voice notes the web console and the CLI keep on disk.
    reply_audio: ReplyAudioStore
    # Platform messages, stored before they are acknowledged; answered by inbox_worker (the
    # adapters register their handlers with it).
    inbox: SqlInbox
    inbox_worker: InboxWorker
    # Training notices for platforms this process has no adapter for (a `chatman worker`'s).
    outbox: NoticeOutbox
    # platform → how to send a training notice to a chat there (registered by adapters)
    notifiers: dict[str, Notify] = field(default_factory=dict)
    runner: TrainingRunner | None = None
    relay: NoticeRelay | None = None
    # What /metrics answers (its own registry: one per application).
    metrics: PrometheusMetrics = field(default_factory=PrometheusMetrics)
    state: AppState = AppState.NEW
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def llm(self) -> ChatModel:
        """The model answering now (it changes on a hot swap)."""
        return self.pipeline.llm

    @property
    def served(self) -> Served:
        """The registry entry answering now."""
        return self.models.served

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        asr: SpeechRecognizer | None = None,
        llm: ChatModel | None = None,
        tts: SpeechSynthesizer | None = None,
    ) -> ChatmanApp:
        """Models may be passed in to share already-loaded ones (tests, several adapters).

        Nothing is loaded here; :meth:`start` switches to the registry's active version first.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        persona = load_persona(settings.persona, settings.persona_dir)
        settings = for_persona(settings, persona)
        language = settings.language or persona.language
        languages = answer_languages(settings, persona, language)
        engine = make_engine(settings.resolved_database_url)
        store = SqlStore(engine)
        codec = PyAvCodec(max_seconds=settings.max_voice_seconds,
                          max_bytes=settings.max_upload_bytes,
                          max_cpu_seconds=settings.decode_cpu_seconds)
        asr = asr or build_asr(settings, languages)
        token_cap = reply_token_cap(settings, persona, language)
        # One client for the engine, whichever version it serves (connections are pooled).
        serving = build_serving_engine(settings) if settings.llm_backend == "openai" else None
        llm = llm or build_llm(settings, max_new_tokens=token_cap, serving=serving)
        tts = tts or build_tts(settings, persona, languages)
        metrics = PrometheusMetrics()
        pipeline = VoicePipeline(
            codec=codec, asr=asr, llm=llm, tts=tts, store=store,
            config=PipelineConfig(
                persona=persona.name,
                system_prompts=persona.prompts(languages),
                language=language,
                # Each language's reply as long as its speech budget: what the gate evaluates.
                reply_tokens={lang: reply_token_cap(settings, persona, lang) for lang in languages},
                speech=persona.speech,
                history_max_messages=settings.history_max_messages,
                max_text_chars=settings.max_text_chars,
                max_turns_in_flight=settings.max_turns_in_flight,
            ),
            # User files are decoded in niced worker processes, never in the bot's own.
            decoder=IsolatedDecoder(codec, DECODE_WORKERS),
            observer=metrics,
        )
        reply_audio = ReplyAudioStore(settings.data_dir / "replies")
        curation = SqlCuration(store, persona.name)
        registry = SqlRegistry(store, persona.name)
        jobs = SqlJobQueue(store, persona.name)
        admin = AdminService(
            curation, persona, store=store, language=language, admin_ids=settings.admin_id_set,
            model_version=lambda: pipeline.llm.version,
            count_tokens=lambda messages: pipeline.llm.count_conversation_tokens(messages),
            registry=registry, jobs=jobs, training_key=training_key,
            default_max_steps=settings.train_max_steps,
            reply_audio=reply_audio, train_base_model=settings.train_base_model,
        )

        def model_for(model_ref: str, version: str | None) -> ChatModel:
            return build_llm(settings, model_ref, version, token_cap, serving=serving)

        models = ModelSwitcher(registry=registry, pipeline=pipeline, persona=persona,
                               languages=languages, base_ref=settings.llm_model,
                               factory=model_for)
        inbox = SqlInbox(store)
        inbox_worker = InboxWorker(inbox, owner=settings.resolved_replica_id,
                                   lease_s=settings.inbox_lease_seconds,
                                   workers=settings.resolved_inbox_workers)
        application = cls(settings, persona, engine, store, codec, asr, tts, pipeline, curation,
                          admin, language, registry, jobs, models,
                          ChatQueues(settings.chat_queue_limit), reply_audio, inbox, inbox_worker,
                          SqlNoticeOutbox(store, persona.name), metrics=metrics)
        # Read at scrape time.
        metrics.sources = Sources(turns_in_flight=lambda: pipeline.turns.count,
                                  model_version=lambda: pipeline.llm.version, jobs=jobs,
                                  inbox_stats=inbox.stats)
        admin.on_job_queued = application.wake_runner
        admin.on_model_change = models.request
        return application

    def migrate(self) -> None:
        migrate.upgrade(self.engine)

    def install_starter(self) -> str | None:
        """The persona's shipped starter version, registered (and active) on first start."""
        from training.starter import install_starter

        return install_starter(self.settings, self.persona, self.registry, self.language)

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self, load_models: bool = True, background: bool = False,
                    training: bool | None = None) -> None:
        """Upgrade the schema, pick the active model version, load the models side by side.

        ``background`` also follows version changes made elsewhere and sends the training
        notices other processes stored: what a long-running bot does, not a one-shot CLI
        command. ``training`` runs training jobs (default: with ``background``, if
        CHATMAN_RUN_TRAINING); ``chatman worker`` runs them alone, serving nothing. A start
        that fails stops what it had started and leaves the app STOPPED (close it).
        """
        if self.state is not AppState.NEW:
            raise LifecycleError(f"start() on an app that is {self.state}: build a new one")
        if training is None:
            training = background and self.settings.run_training
        self.state = AppState.STARTING
        try:
            await self._start(load_models, background, training)
        except BaseException:
            await self._stop_background()
            self.state = AppState.STOPPED
            raise
        self.state = AppState.RUNNING

    async def _start(self, load_models: bool, background: bool, training: bool) -> None:
        self.models.attach(asyncio.get_running_loop())
        await asyncio.to_thread(self.migrate)
        await asyncio.to_thread(self.install_starter)
        await self.models.sync(load=False)
        if load_models:
            await asyncio.gather(self.pipeline.warm_up(), asyncio.to_thread(self._load_llm),
                                 *(asyncio.to_thread(m.load) for m in (self.asr, self.tts)))
        if training:
            # A process that serves swaps to a version that passed; one that only trains
            # (`chatman worker`) leaves that to the replicas' registry followers.
            self.runner = TrainingRunner(
                self.jobs, self.registry, self.settings, curation=self.curation,
                notify=self.notify,
                on_release=self.models.release if background else self._release_unserved)
            await self.runner.recover(restarted=True)
            self._tasks.append(asyncio.create_task(self.runner.run_forever(),
                                                   name="training-jobs"))
        if background:
            self.relay = NoticeRelay(self.outbox, self.notifiers,
                                     self.settings.resolved_replica_id)
            self._tasks += [
                asyncio.create_task(self.relay.run_forever(), name="training-notices"),
                asyncio.create_task(self.models.follow(self.settings.registry_poll_seconds),
                                    name="model-registry")]

    async def _release_unserved(self, version: str) -> str | None:
        """A version passed in a process that serves nothing: with runtime LoRA the engine
        loads its adapter now, as a replica's switch would (OpenAIChatModel.load), so the
        replicas' first turns on it don't wait for that; else the replicas' followers load it.
        None when it is active, else why not."""
        s = self.settings
        if s.llm_backend == "openai" and s.llm_lora_adapters:
            return await self.models.release(version)
        found = await asyncio.to_thread(self.registry.get, version)
        if found is not None and found.status == ModelStatus.ACTIVE:
            return None
        return "; ".join(found.reasons) if found else "unknown version"

    def _load_llm(self) -> None:
        try:
            self.llm.load()
        except EngineUnavailable as exc:
            # A serving engine is often still starting when the bot does (vLLM takes minutes):
            # the bot comes up anyway, turns say the engine isn't answering until it does.
            log.warning("LLM %s: %s; answering once it responds", self.llm.version, exc)

    async def stop(self) -> None:
        """Stop background work (a running trainer is stopped and its job recorded). Safe to
        call in any state."""
        if self.state not in (AppState.STARTING, AppState.RUNNING):
            return
        await self._stop_background()
        self.state = AppState.STOPPED

    async def _stop_background(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        for task in self._tasks:
            if task.get_name() == "training-jobs":
                # Let the runner record the interrupted job before it goes.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), 10)
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def close(self) -> None:
        """Release the decoder processes and the database. Idempotent; an app whose background
        work still runs must be stopped first."""
        if self.state is AppState.CLOSED:
            return
        if self._tasks:
            raise LifecycleError("close() while background work runs: await stop() first")
        self.pipeline.close()
        self.engine.dispose()
        self.state = AppState.CLOSED

    @contextlib.asynccontextmanager
    async def running(self, load_models: bool = True, background: bool = False,
                      training: bool | None = None) -> AsyncIterator[ChatmanApp]:
        """Started for the block, stopped and closed after it (even when it raises)."""
        try:
            await self.start(load_models=load_models, background=background, training=training)
            yield self
        finally:
            await self.stop()
            self.close()

    async def __aenter__(self) -> ChatmanApp:
        try:
            await self.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
        self.close()

    # --- training notices ---------------------------------------------------------------
    async def notify(self, chat: ChatRef, notice: Notice) -> None:
        """Sent through this process's adapter for the chat's platform; without one (a
        `chatman worker`, a replica without that platform) stored for a replica that has it."""
        send = self.notifiers.get(chat.platform)
        if send is not None:
            await send(chat, notice)
            return
        log.info("no %s adapter here: job #%d's notice is stored for a replica that has one",
                 chat.platform, notice.job_id)
        await asyncio.to_thread(self.outbox.add, chat, notice)
        if self.relay is not None:
            self.relay.wake()

    def wake_runner(self) -> None:
        if self.runner is not None:
            self.runner.wake()

    # --- hot swap (see ModelSwitcher) -----------------------------------------------------
    def request_model_sync(self) -> None:
        """Thread-safe: the active version may have changed (admin command, CLI)."""
        self.models.request()

    async def sync_model(self, load: bool = True) -> None:
        await self.models.sync(load)
