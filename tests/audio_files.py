"""Audio files made in code for tests: tones encoded by PyAV into any container and codec."""

from __future__ import annotations

import io

import av
import numpy as np

# (container format, codec, sample rate) as phones and browsers produce them.
FORMATS = {
    "ogg-opus": ("ogg", "libopus", 48_000),
    "mp3": ("mp3", "libmp3lame", 44_100),
    "m4a-aac": ("ipod", "aac", 44_100),
    "wav": ("wav", "pcm_s16le", 16_000),
    "webm-opus": ("webm", "libopus", 48_000),
    "flac": ("flac", "flac", 22_050),
}
#: Raw AAC frames with ADTS headers (some Android recorders).
ADTS_AAC = ("adts", "aac", 44_100)


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str, codec_name: str, layout: str = "mono",
           bit_rate: int | None = None, *, video: bool = False) -> bytes:
    """``samples`` (mono) copied to every channel of ``layout``, in ``fmt``/``codec_name``;
    ``video`` adds a black MPEG-4 video track first (a video note)."""
    channels = 2 if layout == "stereo" else 1
    planar = np.ascontiguousarray(np.tile(samples.reshape(1, -1), (channels, 1)))
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        # Every stream must exist before the first packet is muxed.
        v = out.add_stream("mpeg4", rate=10) if video else None
        stream = out.add_stream(codec_name, rate=rate)
        assert isinstance(stream, av.AudioStream), codec_name
        stream.layout = layout
        if bit_rate:
            stream.bit_rate = bit_rate
        if v is not None:
            v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
            for i in range(int(len(samples) / rate * 10)):
                frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
                frame.pts = i
                for p in v.encode(frame.reformat(format="yuv420p")):
                    out.mux(p)
            for p in v.encode(None):
                out.mux(p)
        audio = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        audio.sample_rate = rate
        formats = stream.codec_context.codec.audio_formats
        assert formats, codec_name  # an audio encoder lists the sample formats it takes
        resampler = av.AudioResampler(format=formats[0].name, layout=layout, rate=rate)
        for f in [*resampler.resample(audio), *resampler.resample(None)]:
            f.pts = None
            for p in stream.encode(f):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return buf.getvalue()
