"""Audio in and out with PyAV (it bundles FFmpeg, so no system ffmpeg is needed).

In: what users send (OGG/Opus, MP3, M4A/AAC, WAV, WebM/Opus, FLAC, the audio track of a
video note) → 16 kHz mono float32 for ASR. Out: an OGG/Opus voice note at 48 kHz mono.

Anyone can send the bot any bytes, so decoding is fenced in: the container is recognised from
the bytes (:mod:`bot.infra.audio.sniff`) and opened with that one demuxer, only listed codecs run,
FFmpeg may open nothing but the bytes it was given (no files, no network), and each decode has
a budget of CPU time and decoded duration.
"""

from __future__ import annotations

import io
import logging
import time

import av
import av.error
import numpy as np
from av.audio.stream import AudioStream
from av.codec.context import CodecContext
from av.container import InputContainer
from av.stream import Stream

from bot.core.errors import AudioTooLarge, AudioTooLong, EmptyInput, UnsupportedAudio, UserFacingError
from bot.core.types import Pcm, VoiceNote
from bot.infra.audio.sniff import Container, codec_family, decoder_names, sniff

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16_000
OPUS_SAMPLE_RATE = 48_000
WAVEFORM_POINTS = 256
#: Sample rates and channel counts real recordings have; anything else is a crafted header.
MIN_RATE, MAX_RATE = 4_000, 384_000
MAX_CHANNELS = 8
# Probing reads no more than this before the first packet (the file is in memory anyway).
PROBE_OPTIONS = {"probesize": str(2 * 2**20), "analyzeduration": str(5_000_000)}


class DecodeBudgetExceeded(UnsupportedAudio):
    code = "audio.too_slow"


def _no_files(url: str, flags: int, options: dict[str, object]) -> None:
    """FFmpeg's hook for opening further files or URLs (playlists, references): never."""
    raise PermissionError(f"the audio file asked to open {url[:80]!r}")


class _Budget:
    """CPU time of the decoding thread: a hostile file costs at most this, load or not."""

    def __init__(self, cpu_seconds: float) -> None:
        self.cpu_seconds = cpu_seconds
        self._start = time.thread_time()

    def check(self) -> None:
        spent = time.thread_time() - self._start
        if spent > self.cpu_seconds:
            raise DecodeBudgetExceeded(f"decoding used {spent:.2f}s of CPU "
                                       f"(budget {self.cpu_seconds:.2f}s)")


class PyAvCodec:
    def __init__(
        self,
        *,
        max_seconds: float,
        max_bytes: int,
        bitrate: int = 32_000,
        max_cpu_seconds: float = 1.0,
    ) -> None:
        """``max_cpu_seconds``: CPU budget of one decode (a legitimate 2-minute note needs
        about a third of a second on a laptop core)."""
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.bitrate = bitrate
        self.max_cpu_seconds = max_cpu_seconds
        # Wall-clock guard inside FFmpeg's own loops (open, each read); the CPU budget is the
        # real bound, this only catches a call that would never return to us.
        self.ffmpeg_timeout = max(2.0, 4 * max_cpu_seconds)

    # --- decode ---------------------------------------------------------------------
    def decode(self, data: bytes) -> Pcm:
        try:
            return self._decode(data)
        except UserFacingError:
            raise
        except Exception as err:
            # Whatever else crafted bytes make FFmpeg or PyAV raise is still the file's fault:
            # the user gets the usual refusal, the log keeps what broke.
            log.warning("decoder error on a %d-byte upload: %s: %s", len(data),
                        type(err).__name__, err)
            raise UnsupportedAudio(f"{type(err).__name__}: {err}") from err

    def _decode(self, data: bytes) -> Pcm:
        if not data:
            raise EmptyInput("0-byte audio", code="audio.empty")
        if len(data) > self.max_bytes:
            raise self._too_large(len(data), self.max_bytes)
        kind = sniff(data)
        if kind is None:
            raise UnsupportedAudio(f"unrecognised container, starts with {data[:12]!r}")
        budget = _Budget(self.max_cpu_seconds)
        try:
            container = av.open(
                io.BytesIO(data), mode="r", format=kind.demuxer,
                options={**PROBE_OPTIONS, "protocol_whitelist": "none",
                         "codec_whitelist": decoder_names(kind.codecs)},
                timeout=(self.ffmpeg_timeout, self.ffmpeg_timeout), io_open=_no_files,
            )
        except (av.error.FFmpegError, ValueError, OSError, EOFError, MemoryError) as err:
            raise UnsupportedAudio(f"not a readable {kind.name} file: {err}") from err
        with container:
            stream = self._audio_stream(container, kind)
            declared = _declared_duration(container, stream)
            if declared is not None and declared > self.max_seconds:
                raise self._too_long(declared)
            budget.check()
            samples = self._decode_stream(container, stream, budget)
        if samples.size == 0:
            raise UnsupportedAudio("no audio samples decoded")
        return Pcm(samples=samples, sample_rate=ASR_SAMPLE_RATE)

    @staticmethod
    def _audio_stream(container: InputContainer, kind: Container) -> AudioStream:
        if not container.streams.audio:
            raise UnsupportedAudio(f"{kind.name} file has no audio stream")
        for stream in container.streams.audio:
            ctx = stream.codec_context
            if ctx is None or codec_family(_decoder(ctx)) not in kind.codecs:
                continue
            if not MIN_RATE <= (ctx.sample_rate or 0) <= MAX_RATE:
                raise UnsupportedAudio(f"sample rate {ctx.sample_rate} Hz")
            if not 1 <= (ctx.channels or 0) <= MAX_CHANNELS:
                raise UnsupportedAudio(f"{ctx.channels} channels")
            ctx.thread_count = 1  # the budget counts this thread's CPU time
            return stream
        names = ", ".join(codec_family(_decoder(s.codec_context)) for s in container.streams.audio)
        raise UnsupportedAudio(f"codec {names} in {kind.name} is not supported")

    def _decode_stream(self, container: InputContainer, stream: AudioStream,
                       budget: _Budget) -> np.ndarray:
        limit = int(self.max_seconds * ASR_SAMPLE_RATE)
        resampler: av.AudioResampler | None = None
        shape: tuple[str, str, int] | None = None
        chunks: list[np.ndarray] = []
        total = 0
        packets = bad = 0

        def resample(frame: av.AudioFrame | None) -> None:
            nonlocal total
            assert resampler is not None  # made before the first frame reaches here
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1)
                chunks.append(chunk)
                total += chunk.size

        try:
            # Every stream's packets come back here, so the budget is checked for each of them
            # (demuxing one stream would skip the others inside PyAV, unbudgeted).
            for packet in container.demux():
                budget.check()
                if packet.stream_index != stream.index:
                    continue
                packets += 1
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    # One damaged packet should not cost the user the whole message.
                    bad += 1
                    continue
                for frame in frames:
                    # Demuxing all streams types packets as any stream's; this one is audio.
                    assert isinstance(frame, av.AudioFrame)
                    if not MIN_RATE <= frame.sample_rate <= MAX_RATE or not (
                            1 <= len(frame.layout.channels) <= MAX_CHANNELS):
                        raise UnsupportedAudio(f"frame of {frame.sample_rate} Hz, "
                                               f"{len(frame.layout.channels)} channels")
                    # MP3 and AAC streams may switch rate or layout mid-stream (joined files);
                    # a resampler serves one input format, so start a new one.
                    now = (frame.format.name, frame.layout.name, frame.sample_rate)
                    if now != shape:
                        if resampler is not None:
                            resample(None)
                        resampler = av.AudioResampler(format="flt", layout="mono",
                                                      rate=ASR_SAMPLE_RATE)
                        shape = now
                    frame.pts = None
                    resample(frame)
                if total > limit:
                    # Declared durations can be missing or lie; stop before decoding it all.
                    raise self._too_long(total / ASR_SAMPLE_RATE, at_least=True)
            if resampler is not None:
                resample(None)
        except (av.error.FFmpegError, ValueError, OSError, EOFError, MemoryError) as err:
            raise UnsupportedAudio(f"decoding failed: {err}") from err
        if packets and bad > packets // 2:
            raise UnsupportedAudio(f"{bad} of {packets} packets undecodable")
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        samples: np.ndarray = np.clip(np.concatenate(chunks), -1.0, 1.0).astype(np.float32, copy=False)
        return samples

    def check_declared(self, size_bytes: int | None, duration_s: float | None,
                       platform_max_bytes: int | None = None) -> None:
        """Refuse a file by what its platform says of it, before downloading it."""
        limit = min(self.max_bytes, platform_max_bytes or self.max_bytes)
        if size_bytes and size_bytes > limit:
            raise self._too_large(size_bytes, limit)
        if duration_s and duration_s > self.max_seconds:
            raise self._too_long(duration_s)

    @staticmethod
    def _too_large(size_bytes: int, limit: int) -> AudioTooLarge:
        return AudioTooLarge(f"{size_bytes} bytes > {limit}",
                             params={"size_mb": size_bytes / 2**20, "limit_mb": limit / 2**20})

    def _too_long(self, seconds: float, at_least: bool = False) -> AudioTooLong:
        return AudioTooLong(f"{seconds:.1f}s > {self.max_seconds}s",
                            code="audio.too_long_at_least" if at_least else None,
                            params={"seconds": seconds, "max_seconds": self.max_seconds})

    # --- encode ---------------------------------------------------------------------
    def encode_voice_note(self, audio: Pcm) -> VoiceNote:
        samples = np.clip(np.asarray(audio.samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="ogg") as out:
            stream = out.add_stream("libopus", rate=OPUS_SAMPLE_RATE)
            stream.layout = "mono"
            stream.bit_rate = self.bitrate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=OPUS_SAMPLE_RATE)
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = audio.sample_rate
            frame.pts = None
            for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
                resampled.pts = None
                for packet in stream.encode(resampled):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        return VoiceNote(
            data=buf.getvalue(),
            duration_s=round(len(samples) / float(audio.sample_rate), 3),
            waveform=waveform(samples),
        )


def _decoder(ctx: CodecContext) -> str | None:
    """The decoder's name; None when FFmpeg has none for the stream (a crafted header)."""
    try:
        return ctx.name
    except (AttributeError, ValueError):
        return None


def _declared_duration(container: InputContainer, stream: Stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def waveform(samples: np.ndarray, points: int = WAVEFORM_POINTS) -> bytes:
    """Per-bucket RMS scaled so the loudest bucket is 255 (Discord's voice-message format)."""
    if samples.size == 0:
        return bytes(points)
    padded = samples
    if samples.size < points:
        padded = np.pad(samples, (0, points - samples.size))
    buckets = np.array_split(padded.astype(np.float64), points)
    rms = np.array([np.sqrt(np.mean(b * b)) if b.size else 0.0 for b in buckets])
    peak = rms.max()
    if peak <= 1e-9:
        return bytes(points)
    return bytes(np.round(rms / peak * 255).astype(np.uint8).tolist())
