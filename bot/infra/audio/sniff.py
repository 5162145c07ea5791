"""Which audio container a file is, decided from its first bytes alone.

FFmpeg's own probing tries every demuxer it has, including ones that open other files or
network sockets (ffconcat scripts, HLS playlists, SDP descriptions). We never let it guess:
the bytes must start like one of the containers voice notes and audio files actually come in,
and the decoder is then opened with exactly that demuxer and a short list of codecs. File
names and MIME types are ignored: users (and platforms) get them wrong, attackers lie.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Decoders we run, by FFmpeg codec name: speech codecs of phones, browsers and chat apps.
PCM_CODECS = frozenset({
    "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_u8", "pcm_f32le", "pcm_f64le",
    "pcm_s16be", "pcm_alaw", "pcm_mulaw",
})
COMPRESSED_CODECS = frozenset({"opus", "vorbis", "mp3", "aac", "flac"})
#: FFmpeg names decoders, not formats: these decode one of the codecs above.
DECODER_ALIASES = {"mp3float": "mp3", "aac_fixed": "aac", "libopus": "opus",
                   "libvorbis": "vorbis"}


def codec_family(decoder: str | None) -> str:
    return DECODER_ALIASES.get(decoder or "", decoder or "?")


def decoder_names(codecs: frozenset[str]) -> str:
    """FFmpeg's codec_whitelist value for ``codecs``: every decoder of each."""
    names = set(codecs) | {alias for alias, family in DECODER_ALIASES.items() if family in codecs}
    return ",".join(sorted(names))


@dataclass(frozen=True, slots=True)
class Container:
    name: str  # what users are told ("OGG", "MP3", …)
    demuxer: str  # FFmpeg demuxer name passed as av.open(format=…)
    codecs: frozenset[str]


OGG = Container("OGG", "ogg", frozenset({"opus", "vorbis", "flac"}))
WAV = Container("WAV", "wav", PCM_CODECS)
FLAC = Container("FLAC", "flac", frozenset({"flac"}))
MP3 = Container("MP3", "mp3", frozenset({"mp3"}))
ADTS_AAC = Container("AAC", "aac", frozenset({"aac"}))
# The MP4 family: M4A voice memos, Telegram video notes, Safari recordings.
MP4 = Container("MP4/M4A", "mov", frozenset({"aac", "mp3", "opus", "flac"}))
# Chrome's and Firefox's MediaRecorder output.
WEBM = Container("WebM/Matroska", "matroska", frozenset({"opus", "vorbis", "aac", "mp3", "flac",
                                                          "pcm_s16le", "pcm_f32le"}))

#: How far past an ID3 tag the first MP3 frame may start.
ID3_PADDING_SCAN = 4096

SUPPORTED = "OGG/Opus, MP3, M4A/AAC, WAV, WebM or FLAC"


def id3v2_size(data: bytes) -> int | None:
    """Total length of a leading ID3v2 tag (header, body, footer), or None if there is none."""
    if len(data) < 10 or data[:3] != b"ID3" or data[3] == 0xFF or data[4] == 0xFF:
        return None
    size_bytes = data[6:10]
    if any(b & 0x80 for b in size_bytes):  # sync-safe integers never set the high bit
        return None
    size = 0
    for b in size_bytes:
        size = (size << 7) | b
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def _mpeg_audio(head: bytes) -> Container | None:
    """An MPEG audio frame header: layer III is MP3, 'layer 0' is an ADTS AAC header."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    layer = (head[1] >> 1) & 0x03
    if head[1] & 0xF0 == 0xF0 and layer == 0:
        return ADTS_AAC
    version = (head[1] >> 3) & 0x03
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 0x03
    if layer == 1 and version != 1 and bitrate not in (0, 15) and rate != 3:
        return MP3
    return None


def sniff(data: bytes) -> Container | None:
    """The container ``data`` starts as, or None when it is nothing we decode."""
    if data[:4] == b"OggS":
        return OGG
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return WAV
    if data[:4] == b"fLaC":
        return FLAC
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return WEBM
    if data[4:8] == b"ftyp":
        return MP4
    tag = id3v2_size(data)
    if tag is not None:
        # ID3 tags front MP3 files (and sometimes FLAC); what follows decides.
        if data[tag:tag + 4] == b"fLaC":
            return FLAC
        # Encoders may pad between the tag and the first frame; look a little further.
        for at in range(tag, min(len(data) - 3, tag + ID3_PADDING_SCAN)):
            if data[at] == 0xFF and _mpeg_audio(data[at:at + 4]) is MP3:
                return MP3
        return None
    return _mpeg_audio(data[:4])
