"""Audio in and out with PyAV (it bundles FFmpeg, so no system ffmpeg is needed).

In: whatever users send (OGG/Opus, MP3, M4A/AAC, WAV, WebM/Opus, FLAC, the audio track of a
video note) → 16 kHz mono float32 for ASR. Out: an OGG/Opus voice note at 48 kHz mono.
"""

from __future__ import annotations

import io
import logging

import av
import av.error
import numpy as np

from bot.errors import AudioTooLarge, AudioTooLong, EmptyInput, UnsupportedAudio
from bot.types import Pcm, VoiceNote

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16_000
OPUS_SAMPLE_RATE = 48_000
WAVEFORM_POINTS = 256


class PyAvCodec:
    def __init__(
        self,
        *,
        max_seconds: float,
        max_bytes: int,
        bitrate: int = 32_000,
    ) -> None:
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.bitrate = bitrate

    # --- decode ---------------------------------------------------------------------
    def decode(self, data: bytes) -> Pcm:
        if not data:
            raise EmptyInput("0-byte audio", user_message="That audio file was empty.")
        if len(data) > self.max_bytes:
            raise self._too_large(len(data), self.max_bytes)
        try:
            container = av.open(io.BytesIO(data), mode="r")
        except (av.error.FFmpegError, ValueError, OSError) as err:
            raise UnsupportedAudio(f"not a readable container: {err}") from err
        with container:
            if not container.streams.audio:
                raise UnsupportedAudio("container has no audio stream")
            stream = container.streams.audio[0]
            declared = _declared_duration(container, stream)
            if declared is not None and declared > self.max_seconds:
                raise self._too_long(declared)
            samples = self._decode_stream(container, stream)
        if samples.size == 0:
            raise UnsupportedAudio("no audio samples decoded")
        return Pcm(samples=samples, sample_rate=ASR_SAMPLE_RATE)

    def _decode_stream(self, container: av.container.InputContainer, stream) -> np.ndarray:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=ASR_SAMPLE_RATE)
        limit = int(self.max_seconds * ASR_SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        packets = bad = 0
        try:
            for packet in container.demux(stream):
                packets += 1
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    # One damaged packet should not cost the user the whole message.
                    bad += 1
                    continue
                for frame in frames:
                    for out in resampler.resample(frame):
                        chunk = out.to_ndarray().reshape(-1)
                        chunks.append(chunk)
                        total += chunk.size
                if total > limit:
                    # Declared durations can be missing or lie; stop before decoding it all.
                    raise self._too_long(total / ASR_SAMPLE_RATE, at_least=True)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as err:
            raise UnsupportedAudio(f"demuxing failed: {err}") from err
        if packets and bad > packets // 2:
            raise UnsupportedAudio(f"{bad} of {packets} packets undecodable")
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.clip(np.concatenate(chunks), -1.0, 1.0).astype(np.float32, copy=False)

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
        return AudioTooLarge(
            f"{size_bytes} bytes > {limit}",
            user_message=(f"That file is too big ({size_bytes / 2**20:.1f} MB); "
                          f"I accept up to {limit / 2**20:.0f} MB."),
        )

    def _too_long(self, seconds: float, at_least: bool = False) -> AudioTooLong:
        shown = f"over {seconds:.0f}" if at_least else f"{seconds:.0f}"
        return AudioTooLong(
            f"{seconds:.1f}s > {self.max_seconds}s",
            user_message=(
                f"That recording is too long ({shown} s); "
                f"please keep it under {self.max_seconds:.0f} seconds."
            ),
        )

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


def _declared_duration(container, stream) -> float | None:
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


def is_silent(audio: Pcm, threshold_dbfs: float = -55.0) -> bool:
    """True when even the loudest 30 ms window is below ``threshold_dbfs``."""
    if audio.samples.size == 0:
        return True
    window = max(1, int(audio.sample_rate * 0.03))
    x = audio.samples.astype(np.float64)
    usable = x.size - x.size % window
    if usable == 0:
        frames = x.reshape(1, -1)
    else:
        frames = x[:usable].reshape(-1, window)
    loudest = np.sqrt((frames**2).mean(axis=1)).max()
    return 20 * np.log10(max(loudest, 1e-12)) < threshold_dbfs
