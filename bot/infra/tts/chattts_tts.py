"""ChatTTS: the persona's own voice, the same after every restart and on every platform.

A ChatTTS voice is a speaker embedding. It is sampled once from the persona's seed and stored as
ChatTTS's own speaker string in a file next to the persona (or in the data folder when that is
read-only), then reused; changing ChatTTS versions or sampling code can't change the voice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.core.types import Pcm
from bot.infra.devices import resolve_device
from bot.infra.tts.spoken import sentences, spoken

if TYPE_CHECKING:
    from ChatTTS import Chat

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
HUB_SOURCE = "2Noise/ChatTTS"
PAUSE_S = 0.25
BATCH = 4  # sentences per ChatTTS call


@dataclass(frozen=True)
class AssetCheck:
    """What ``chatman doctor`` says of a ChatTTS folder: each file of the official layout is
    there, and which match the official release's hashes (a fine-tuned voice matches none)."""

    folder: Path
    missing: tuple[str, ...]
    differing: tuple[str, ...]
    checked: int

    @property
    def official(self) -> bool:
        return not self.missing and not self.differing

    def describe(self) -> str:
        if self.missing:
            return (f"{self.folder} lacks {', '.join(self.missing)} (ChatTTS's layout: asset/*."
                    "safetensors, asset/gpt/, asset/tokenizer/; see README \"ChatTTS weights\")")
        if self.differing:
            return (f"{self.folder}: all {self.checked} files present; {len(self.differing)} differ "
                    f"from the official release ({', '.join(self.differing)}): a custom voice?")
        return f"{self.folder}: the official {HUB_SOURCE} weights ({self.checked} files verified)"


def check_assets(folder: Path) -> AssetCheck:
    """Every file ChatTTS loads from ``folder``, hashed against the digests the installed
    ChatTTS package ships for the official release (``ChatTTS/res/sha256_map.json``)."""
    import hashlib
    import importlib.util
    import json

    spec = importlib.util.find_spec("ChatTTS")
    assert spec is not None and spec.origin is not None
    digests: dict[str, str] = json.loads(
        (Path(spec.origin).parent / "res" / "sha256_map.json").read_text(encoding="utf-8"))
    missing: list[str] = []
    differing: list[str] = []
    for key, want in digests.items():
        # sha256_asset_gpt_model_safetensors -> asset/gpt/model.safetensors
        rel = _asset_path(key)
        path = folder / rel
        if not path.is_file():
            missing.append(rel)
            continue
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != want:
            differing.append(rel)
    return AssetCheck(folder, tuple(missing), tuple(differing), len(digests))


def _asset_path(key: str) -> str:
    parts = key.removeprefix("sha256_").split("_")
    # asset/, maybe one subfolder (gpt, tokenizer), then the file, whose stem may hold
    # underscores (special_tokens_map) and whose extension is the last part
    folders = parts[:2] if parts[1] in ("gpt", "tokenizer") else parts[:1]
    stem = "_".join(parts[len(folders):-1])
    return "/".join([*folders, f"{stem}.{parts[-1]}"])


@dataclass(frozen=True)
class ChatTTSVoice:
    """The persona's ``voice.chattts`` settings (persona.yaml)."""

    seed: int = 2222
    speaker_file: str = "chattts_speaker.txt"
    speed: int = 5  # ChatTTS's [speed_0] … [speed_9]
    temperature: float = 0.3
    top_p: float = 0.7
    top_k: int = 20
    refine_text: bool = False
    max_new_tokens: int = 2048

    @classmethod
    def from_persona(cls, settings: dict[str, Any]) -> ChatTTSVoice:
        known = {k: v for k, v in settings.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown voice.chattts settings: {', '.join(unknown)}")
        voice = cls(**known)
        if not 0 <= voice.speed <= 9:
            raise ValueError("voice.chattts.speed must be 0..9")
        return voice


class ChatTTSSpeech:
    name = "chattts"

    def __init__(self, path: str | None, voice: ChatTTSVoice, *, speaker_dirs: list[Path],
                 device: str = "auto") -> None:
        """``path``: a folder in ChatTTS's layout (``asset/…``); None: the hub's 2Noise/ChatTTS.

        ``speaker_dirs``: where the speaker file is looked for, in order; it is written to the
        first writable one.
        """
        self.path = path
        self.voice = voice
        self.speaker_dirs = speaker_dirs
        self.device_setting = device
        self.speaker: str | None = None
        self._chat: Chat | None = None
        self._lock = threading.Lock()
        self.sample_rate = SAMPLE_RATE

    def load(self) -> None:
        with self._lock:
            if self._chat is not None:
                return
            import ChatTTS
            import torch

            device = torch.device(resolve_device(self.device_setting))
            chat = ChatTTS.Chat(logging.getLogger("ChatTTS"))
            if self.path:
                folder = Path(self.path)
                if not (folder / "asset").is_dir():
                    raise FileNotFoundError(f"{folder} has no asset/ folder (ChatTTS's layout)")
                # ChatTTS's own loader. Its "custom" source also checks the files against the
                # official release's hashes, which a fine-tuned or converted voice never matches.
                ok = chat._load(device=device, **{
                    k: str(folder / v) for k, v in asdict(chat.config.path).items()})
            else:
                ok = chat.load(source="huggingface", device=device)
            if not ok:
                raise RuntimeError(f"ChatTTS could not load {self.path or HUB_SOURCE}")
            self.speaker = self._speaker(chat)
            self._chat = chat
            log.info("ChatTTS loaded from %s on %s", self.path or HUB_SOURCE, device)

    def _speaker(self, chat: Chat) -> str:
        for folder in self.speaker_dirs:
            stored = folder / self.voice.speaker_file
            if stored.is_file():
                return stored.read_text(encoding="utf-8").strip()
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.voice.seed)
            speaker: str = chat.sample_random_speaker()
        for folder in self.speaker_dirs:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / self.voice.speaker_file).write_text(speaker, encoding="utf-8")
                log.info("sampled the ChatTTS speaker from seed %d into %s", self.voice.seed,
                         folder / self.voice.speaker_file)
                break
            except OSError:
                continue
        return speaker

    def synthesize(self, text: str, language: str) -> Pcm:
        self.load()
        import ChatTTS

        v = self.voice
        pieces = sentences(spoken(text, language))
        if not pieces:
            return Pcm(np.zeros(0, dtype=np.float32), SAMPLE_RATE)
        params = ChatTTS.Chat.InferCodeParams(
            spk_emb=self.speaker, prompt=f"[speed_{v.speed}]", temperature=v.temperature,
            top_P=v.top_p, top_K=v.top_k, max_new_token=v.max_new_tokens, manual_seed=v.seed,
            show_tqdm=False)
        pause = np.zeros(int(SAMPLE_RATE * PAUSE_S), dtype=np.float32)
        parts: list[np.ndarray] = []
        with self._lock:  # one synthesis at a time: ChatTTS keeps per-call state
            assert self._chat is not None  # load() above
            for i in range(0, len(pieces), BATCH):
                wavs = self._chat.infer(
                    pieces[i:i + BATCH], skip_refine_text=not v.refine_text, split_text=False,
                    do_text_normalization=False, do_homophone_replacement=False,
                    params_infer_code=params)
                for wav in wavs:
                    parts += [np.asarray(wav, dtype=np.float32).reshape(-1), pause]
        samples = np.concatenate(parts[:-1]) if parts else np.zeros(0, dtype=np.float32)
        return Pcm(np.clip(samples, -1.0, 1.0), SAMPLE_RATE)
