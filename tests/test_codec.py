"""Decoding what users send and encoding the reply voice note, through PyAV."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from bot.core.errors import AudioTooLarge, AudioTooLong, EmptyInput, UnsupportedAudio
from bot.core.loudness import is_silent
from bot.core.types import Pcm
from bot.infra.audio import codec as codec_module
from bot.infra.audio.codec import PyAvCodec, waveform
from tests.audio_files import FORMATS, encode, tone

__all__ = ["FORMATS", "dominant_hz", "encode", "tone"]


def dominant_hz(pcm: Pcm) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.samples))
    return float(np.fft.rfftfreq(pcm.samples.size, 1 / pcm.sample_rate)[spectrum.argmax()])


@pytest.mark.parametrize("name", FORMATS)
def test_each_input_format_decodes_to_16k_mono(codec, name):
    fmt, codec_name, rate = FORMATS[name]
    data = encode(tone(2.0, rate), rate, fmt, codec_name)
    pcm = codec.decode(data)
    assert pcm.sample_rate == 16_000
    assert pcm.samples.dtype == np.float32 and pcm.samples.ndim == 1
    # Lossy codecs pad a few frames; the length must still be the recording's.
    assert pcm.duration_s == pytest.approx(2.0, abs=0.08)
    assert dominant_hz(pcm) == pytest.approx(440, abs=5)
    assert np.sqrt(np.mean(pcm.samples**2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.15)


def test_audio_track_of_a_video_note_is_used(codec):
    data = encode(tone(1.5, 44_100, freq=300), 44_100, "mp4", "aac", video=True)
    pcm = codec.decode(data)
    assert pcm.duration_s == pytest.approx(1.5, abs=0.08)
    assert dominant_hz(pcm) == pytest.approx(300, abs=5)


def test_reply_is_a_valid_ogg_opus_voice_note(codec):
    # Loud first second, near-silent second: the waveform must show that shape.
    rate = 22_050
    samples = np.concatenate([tone(1.0, rate, amp=0.8), tone(1.0, rate, amp=0.02)])
    note = codec.encode_voice_note(Pcm(samples, rate))

    assert note.data[:4] == b"OggS" and note.mime_type == "audio/ogg"
    assert note.duration_s == pytest.approx(2.0, abs=1e-3)
    with av.open(io.BytesIO(note.data), "r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        assert stream.rate == 48_000 and stream.codec_context.channels == 1
        assert container.duration is not None
        assert container.duration / av.time_base == pytest.approx(2.0, abs=0.05)
        bitrate = len(note.data) * 8 / 2.0
        assert 16_000 < bitrate < 48_000  # ~32 kbps as voice notes are
    # Decoding it back gives the same length and tone.
    again = codec.decode(note.data)
    assert again.duration_s == pytest.approx(2.0, abs=0.05)
    assert dominant_hz(again) == pytest.approx(440, abs=5)

    wf = note.waveform
    assert len(wf) == 256 and max(wf) == 255
    assert min(wf[:120]) > 200 and max(wf[136:]) < 20


def test_waveform_of_silence_and_of_very_short_audio():
    assert waveform(np.zeros(1000, np.float32)) == bytes(256)
    short = waveform(np.array([0.5, -0.5, 0.25], np.float32))
    assert len(short) == 256 and max(short) == 255


def test_silence_detection():
    rate = 16_000
    assert is_silent(Pcm(np.zeros(rate, np.float32), rate))
    assert is_silent(Pcm((np.random.default_rng(0).standard_normal(rate) * 1e-4).astype(np.float32), rate))
    assert not is_silent(Pcm(tone(1.0, rate, amp=0.1), rate))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyInput),
        (b"this is a text file, not a voice note\n" * 20, UnsupportedAudio),
        (b"OggS" + bytes(range(256)) * 8, UnsupportedAudio),
        (np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), UnsupportedAudio),
    ],
    ids=["empty", "text", "corrupt-ogg", "random"],
)
def test_unreadable_input_raises_a_user_facing_error(codec, data, error):
    with pytest.raises(error) as info:
        codec.decode(data)
    assert info.value.user_message


def test_truncated_voice_note_is_refused_or_decoded_never_crashes(codec):
    data = encode(tone(3.0, 48_000), 48_000, "ogg", "libopus")
    for cut in (30, len(data) // 3, len(data) - 7):
        try:
            pcm = codec.decode(data[:cut])
        except UnsupportedAudio:
            continue
        assert pcm.duration_s <= 3.05


def test_size_limit_is_checked_before_decoding():
    small = PyAvCodec(max_seconds=120, max_bytes=1000)
    with pytest.raises(AudioTooLarge) as info:
        small.decode(b"\0" * 1001)
    assert "too big" in info.value.user_message


def test_duration_limit_uses_the_declared_duration(monkeypatch):
    data = encode(tone(3.0, 16_000), 16_000, "wav", "pcm_s16le")
    short_limit = PyAvCodec(max_seconds=2, max_bytes=10**7)
    decoded = []
    monkeypatch.setattr(short_limit, "_decode_stream", lambda *a: decoded.append(1))
    with pytest.raises(AudioTooLong) as info:
        short_limit.decode(data)
    assert not decoded, "refused from the header, before decoding"
    assert "under 2 seconds" in info.value.user_message


def test_duration_limit_holds_when_no_duration_is_declared(monkeypatch):
    data = encode(tone(3.0, 48_000), 48_000, "ogg", "libopus")
    monkeypatch.setattr(codec_module, "_declared_duration", lambda *a: None)
    with pytest.raises(AudioTooLong):
        PyAvCodec(max_seconds=2, max_bytes=10**7).decode(data)


def test_declared_size_and_duration_are_checked_before_any_download():
    small = PyAvCodec(max_seconds=60, max_bytes=10 * 2**20)
    small.check_declared(2 * 2**20, 30.0)
    small.check_declared(None, None)  # platforms don't always say
    with pytest.raises(AudioTooLarge) as big:
        small.check_declared(11 * 2**20, 5.0)
    assert big.value.user_message == "That file is too big (11.0 MB); I accept up to 10 MB."
    with pytest.raises(AudioTooLarge) as platform:  # the platform's own cap may be lower
        small.check_declared(6 * 2**20, 5.0, platform_max_bytes=5 * 2**20)
    assert platform.value.user_message.endswith("I accept up to 5 MB.")
    with pytest.raises(AudioTooLong) as long:
        small.check_declared(2**20, 61.0)
    assert long.value.user_message == ("That recording is too long (61 s); please keep it under "
                                       "60 seconds.")
