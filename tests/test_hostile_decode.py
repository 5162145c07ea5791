"""Every hostile upload of tests/hostile_corpus.py through the decoder users' bytes go to.

The contract: ``decode`` returns a Pcm or raises a UserFacingError (with a message for the
user), never anything else; it opens no file and no socket; it costs about a second at most.
Time is bounded by pytest-timeout rather than asserted: a decode that hangs or loops fails
here instead of wedging the suite.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

import av
import numpy as np
import pytest

from bot.core.errors import UserFacingError
from bot.core.types import Pcm
from bot.infra.audio.codec import PyAvCodec
from tests.audio_files import ADTS_AAC, FORMATS, encode, tone
from tests.hostile_corpus import (
    REFERENCE_BAIT,
    REPO,
    SAMPLE,
    SAMPLE_RELATIVE,
    by_name,
    corpus,
)
from tests.test_codec import dominant_hz

MAX_SECONDS = 120
ENTRIES = corpus()
NAMES = [f.name for f in ENTRIES]
# Legit audio whose sample rate or channel layout changes part-way (joined encodes).
MID_STREAM_CHANGES = ("mp3-rate-change", "mp3-layout-change", "mp3-rate-and-layout-changes",
                      "aac-adts-rate-change", "aac-adts-layout-change")
BOMBS = [f.name for f in ENTRIES if "bomb" in f.name or f.name.startswith("flac-384khz")]


@pytest.fixture(scope="module")
def hostile_codec() -> PyAvCodec:
    return PyAvCodec(max_seconds=MAX_SECONDS, max_bytes=20 * 2**20)


def assert_sane_pcm(pcm: Pcm) -> None:
    assert isinstance(pcm, Pcm)
    assert pcm.sample_rate == 16_000
    assert pcm.samples.dtype == np.float32 and pcm.samples.ndim == 1 and pcm.samples.size
    assert np.isfinite(pcm.samples).all()
    # The limit is checked per packet, so a decode may overshoot it by one packet's worth.
    assert pcm.duration_s <= MAX_SECONDS + 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_hostile_input_is_refused_or_decoded_as_expected(hostile_codec, name, monkeypatch):
    entry = by_name()[name]
    # From the repo root the relative paths in scripts and playlists name a real voice note:
    # a Pcm from one of them would be that file, read behind the caller's back.
    monkeypatch.chdir(REPO)
    if entry.expect == "refused":
        with pytest.raises(UserFacingError) as info:
            hostile_codec.decode(entry.data)
        assert isinstance(info.value.user_message, str) and info.value.user_message.strip()
        return
    try:
        pcm = hostile_codec.decode(entry.data)
    except UserFacingError as err:
        if entry.expect == "decodes":
            pytest.fail(f"legit audio refused: {err!r} ({entry.note})")
        assert err.user_message.strip()
        return
    assert_sane_pcm(pcm)
    if entry.expect == "decodes":
        assert pcm.duration_s > 0.5, entry.note


def test_corpus_is_large_unique_and_small():
    assert len(ENTRIES) >= 60
    assert len(set(NAMES)) == len(NAMES)
    for entry in ENTRIES:
        assert entry.name.replace("-", "").isalnum() and entry.name.islower(), entry.name
        assert entry.expect in ("refused", "decodes", "either") and entry.note
        assert len(entry.data) < 2 * 2**20, entry.name
    assert all(by_name()[n].expect == "refused" for n in REFERENCE_BAIT)


def test_the_ffconcat_bait_is_live(monkeypatch):
    """Unfenced FFmpeg does follow the relative-path script: so refusing it means something."""
    monkeypatch.chdir(REPO)
    assert (REPO / SAMPLE_RELATIVE).is_file()
    script = by_name()["ffconcat-relative-path"].data
    with av.open(io.BytesIO(script), "r") as container:
        assert container.format.name == "concat"
        stream = container.streams.audio[0]
        frames = sum(1 for _ in container.decode(stream))
    with av.open(str(SAMPLE)) as original:
        expected = sum(1 for _ in original.decode(audio=0))
    assert frames == expected


@pytest.mark.parametrize("name", MID_STREAM_CHANGES)
def test_mid_stream_entries_really_change_rate_or_layout(name):
    shapes: set[tuple[int, str]] = set()
    with av.open(io.BytesIO(by_name()[name].data), "r") as container:
        for packet in container.demux(audio=0):
            # The second file's ID3 tag and Info frame sit at the join: skip what won't decode.
            with contextlib.suppress(av.error.InvalidDataError):
                shapes.update((f.sample_rate, f.layout.name) for f in packet.decode())
    assert len(shapes) >= 2, shapes


@pytest.mark.timeout(120)  # an unfenced SDP decode waits ~20 s per file for RTP
def test_decoding_leaves_no_file_behind(hostile_codec, tmp_path, monkeypatch):
    # Run from an empty folder: anything FFmpeg writes relative to the cwd shows up there.
    monkeypatch.chdir(tmp_path)
    temp_dirs = {tempfile.gettempdir(), "/tmp"}  # FFmpeg's own temp files go to /tmp
    before = {d: set(os.listdir(d)) for d in temp_dirs}
    for name in [*REFERENCE_BAIT, *BOMBS, *MID_STREAM_CHANGES]:
        # Outcomes are the parametrized test's business; this one only looks at the disk.
        with contextlib.suppress(Exception):
            hostile_codec.decode(by_name()[name].data)
    assert list(tmp_path.iterdir()) == []
    for d in temp_dirs:
        assert set(os.listdir(d)) - before[d] == set(), d


LEGIT = {**FORMATS, "adts-aac": ADTS_AAC, "mkv-pcm": ("matroska", "pcm_s16le",
                                                                     16_000)}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", LEGIT)
def test_a_legit_two_second_tone_still_decodes(hostile_codec, name):
    fmt, codec_name, rate = LEGIT[name]
    pcm = hostile_codec.decode(encode(tone(2.0, rate), rate, fmt, codec_name))
    assert_sane_pcm(pcm)
    assert pcm.duration_s == pytest.approx(2.0, abs=0.08)
    assert dominant_hz(pcm) == pytest.approx(440, abs=5)
