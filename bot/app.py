"""The application object: every component, built once from settings and injected."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from bot.admin import AdminService
from bot.asr import FasterWhisperASR
from bot.audio.codec import PyAvCodec
from bot.config import STARTER, Settings
from bot.curation import Curation
from bot.llm.chat_model import GenerationSettings, TransformersChatModel
from bot.persona import PersonaProfile, load_persona
from bot.pipeline import PipelineConfig, VoicePipeline
from bot.protocols import AudioCodec, ChatModel, SpeechRecognizer, SpeechSynthesizer
from bot.storage import migrate
from bot.storage.store import SqlStore, make_engine
from bot.tts.piper_tts import PiperTTS

log = logging.getLogger(__name__)


def build_asr(s: Settings) -> SpeechRecognizer:
    return FasterWhisperASR(
        s.asr_model,
        device=s.asr_device,
        compute_type=s.asr_compute_type,
        language=s.asr_language,
        vad=s.asr_vad,
        beam_size=s.asr_beam_size,
    )


def build_llm(s: Settings) -> ChatModel:
    return TransformersChatModel(
        s.llm_model,
        cache_dir=s.resolved_model_cache_dir,
        device=s.llm_device,
        dtype=s.llm_dtype,
        generation=GenerationSettings(
            max_new_tokens=s.llm_max_new_tokens,
            temperature=s.llm_temperature,
            top_p=s.llm_top_p,
            repetition_penalty=s.llm_repetition_penalty,
            seed=s.llm_seed,
        ),
        context_tokens=s.llm_context_tokens,
    )


def build_tts(s: Settings, persona: PersonaProfile | None = None) -> SpeechSynthesizer:
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


@dataclass
class ChatmanApp:
    settings: Settings
    persona: PersonaProfile
    engine: Engine
    store: SqlStore
    codec: AudioCodec
    asr: SpeechRecognizer
    llm: ChatModel
    tts: SpeechSynthesizer
    pipeline: VoicePipeline
    curation: Curation
    admin: AdminService
    language: str

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        asr: SpeechRecognizer | None = None,
        llm: ChatModel | None = None,
        tts: SpeechSynthesizer | None = None,
    ) -> ChatmanApp:
        """Models may be passed in to share already-loaded ones (tests, several adapters)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        persona = load_persona(settings.persona, settings.persona_dir)
        language = settings.language or persona.language
        engine = make_engine(settings.resolved_database_url)
        store = SqlStore(engine)
        codec = PyAvCodec(max_seconds=settings.max_voice_seconds, max_bytes=settings.max_upload_bytes)
        asr = asr or build_asr(settings)
        llm = llm or build_llm(settings)
        tts = tts or build_tts(settings, persona)
        pipeline = VoicePipeline(
            codec=codec, asr=asr, llm=llm, tts=tts, store=store,
            config=PipelineConfig(
                persona=persona.name,
                system_prompt=persona.prompt_for(language),
                language=language,
                history_max_messages=settings.history_max_messages,
            ),
        )
        curation = Curation(store, persona.name)
        admin = AdminService(
            curation, persona, language=language, admin_ids=settings.admin_id_set,
            model_version=lambda: llm.version,
            count_tokens=llm.count_conversation_tokens,
        )
        return cls(settings, persona, engine, store, codec, asr, llm, tts, pipeline, curation,
                   admin, language)

    def migrate(self) -> None:
        migrate.upgrade(self.engine)

    async def start(self, load_models: bool = True) -> None:
        """Upgrade the schema, then load the models side by side in worker threads."""
        await asyncio.to_thread(self.migrate)
        if load_models:
            await asyncio.gather(*(asyncio.to_thread(m.load) for m in (self.asr, self.llm, self.tts)))

    def close(self) -> None:
        self.engine.dispose()
