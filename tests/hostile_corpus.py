"""Hostile and edge-case uploads for the audio decoder, all built in code (no binaries).

Anyone can send the bot any bytes under any name. These are the bytes that matter: scripts
and playlists that make FFmpeg open other files or sockets, headers that lie about size,
rate or duration, decompression bombs, polyglots, streams that change format mid-way, and
plain audio under the wrong name. ``corpus()`` builds them once per process (< 1 s here).

``expect`` is what the decoder contract allows (see tests/test_hostile_decode.py):
"refused" must raise a UserFacingError, "decodes" must give a Pcm, "either" may do either,
but nothing else, ever.
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from tests.audio_files import ADTS_AAC, FORMATS, encode, tone

REPO = Path(__file__).resolve().parents[1]
# A real voice note in the checkout: if a script or playlist pointing at it decodes, the
# decoder read a file it was never given.
SAMPLE_RELATIVE = "persona/manman/samples/question.ogg"
SAMPLE = REPO / SAMPLE_RELATIVE
# Port 9 (discard) on loopback: nothing listens, so a fetch fails fast instead of hanging.
LOCAL_URL = "http://127.0.0.1:9/voice.ogg"


@dataclass(frozen=True)
class HostileFile:
    name: str  # unique, filesystem-safe, e.g. "ffconcat-relative-path"
    data: bytes
    expect: str  # "refused" | "decodes" | "either"
    note: str  # one line: what it tries
    filename: str = "voice.ogg"  # the name it would be uploaded under (wrong on purpose)


EXPECTATIONS = ("refused", "decodes", "either")


def corpus() -> list[HostileFile]:
    return list(_corpus())


def by_name() -> dict[str, HostileFile]:
    return {f.name: f for f in _corpus()}


#: Entries whose only way to "decode" is to open another file or a socket: a Pcm from any of
#: them means FFmpeg followed a reference (the tests run these with cwd = the repo root, so
#: the relative paths resolve).
REFERENCE_BAIT = (
    "ffconcat-relative-path", "ffconcat-absolute-path", "ffconcat-etc-passwd",
    "ffconcat-file-url", "ffconcat-http-localhost", "hls-file-url", "hls-http-localhost",
    "hls-relative-path", "hls-absolute-path", "sdp-udp-unicast", "sdp-udp-multicast",
    "concat-protocol-url", "file-url-text", "id3-then-ffconcat", "id3-magic-then-ffconcat",
    "oggs-then-hls", "wav-riff-then-ffconcat", "m4a-dref-alias-external",
)


@functools.cache
def _corpus() -> tuple[HostileFile, ...]:
    files = [
        *_references(),
        *_not_audio(),
        *_mid_stream_changes(),
        *_damaged(),
        *_wav_headers(),
        *_id3_only(),
        *_bombs(),
        *_granule_lies(),
        *_containers_and_codecs(),
        *_wrong_names(),
    ]
    names = [f.name for f in files]
    assert len(names) == len(set(names)), "corpus names must be unique"
    assert all(f.expect in EXPECTATIONS for f in files)
    assert set(REFERENCE_BAIT) <= set(names)
    return tuple(files)


# --- encoding helpers -------------------------------------------------------------------

@functools.cache
def _legit(kind: str) -> bytes:
    """Two seconds of tone, as phones and browsers send it (a key of FORMATS, or "adts-aac")."""
    fmt, codec, rate = ADTS_AAC if kind == "adts-aac" else FORMATS[kind]
    return encode(tone(2.0, rate), rate, fmt, codec)


def _video_only_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 20, np.uint8),
                                               format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
    return buf.getvalue()


def _image(codec: str, fmt: str) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        v = out.add_stream(codec, rate=1)
        assert isinstance(v, av.VideoStream), codec
        v.width, v.height = 16, 16
        v.pix_fmt = "yuvj420p" if codec == "mjpeg" else "rgb8" if codec == "gif" else "rgb24"
        rgb = np.zeros((16, 16, 3), np.uint8)
        rgb[:, :8] = (255, 0, 0)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=v.pix_fmt)
        for p in [*v.encode(frame), *v.encode(None)]:
            out.mux(p)
    return buf.getvalue()


def _png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    rows = b"".join(b"\0" + bytes([200, 30, 30]) * 8 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# --- Ogg pages --------------------------------------------------------------------------

class _Crc:
    """MSB-first CRC without reflection, as Ogg (CRC-32, poly 0x04C11DB7) and FLAC frames
    (CRC-8 poly 0x07 for headers, CRC-16 poly 0x8005 for frames) use."""

    def __init__(self, width: int, poly: int) -> None:
        self.width, self.mask = width, (1 << width) - 1
        top = 1 << (width - 1)
        self.table = []
        for i in range(256):
            r = i << (width - 8)
            for _ in range(8):
                r = ((r << 1) ^ poly) if r & top else r << 1
            self.table.append(r & self.mask)

    def __call__(self, data: bytes | bytearray) -> int:
        crc, shift = 0, self.width - 8
        for b in data:
            crc = ((crc << 8) & self.mask) ^ self.table[(crc >> shift) ^ b]
        return crc


_ogg_crc = _Crc(32, 0x04C11DB7)
_crc8 = _Crc(8, 0x07)
_crc16 = _Crc(16, 0x8005)


def _ogg_page(packets: list[bytes], granule: int, serial: int, seq: int, flags: int = 0) -> bytes:
    """One page holding whole packets (each < 255 bytes or a few lacing values long)."""
    lacing = bytearray()
    for p in packets:
        lacing += b"\xff" * (len(p) // 255) + bytes([len(p) % 255])
    assert len(lacing) <= 255
    header = b"OggS" + struct.pack("<BBqIII", 0, flags, granule, serial, seq, 0)
    page = bytearray(header + bytes([len(lacing)]) + lacing + b"".join(packets))
    struct.pack_into("<I", page, 22, _ogg_crc(page))
    return bytes(page)


def _ogg_pages(data: bytes) -> list[bytearray]:
    pages, at = [], 0
    while at + 27 <= len(data) and data[at:at + 4] == b"OggS":
        nseg = data[at + 26]
        body = sum(data[at + 27:at + 27 + nseg])
        end = at + 27 + nseg + body
        pages.append(bytearray(data[at:end]))
        at = end
    return pages


def _regranule(data: bytes, granule_of) -> bytes:
    """Rewrite each audio page's granule position to ``granule_of(index, old)``; fix CRCs."""
    out = []
    for i, page in enumerate(_ogg_pages(data)):
        if i >= 2:  # the two header pages (OpusHead, OpusTags) keep granule 0
            old = struct.unpack_from("<q", page, 6)[0]
            struct.pack_into("<q", page, 6, granule_of(i, old))
            struct.pack_into("<I", page, 22, 0)
            struct.pack_into("<I", page, 22, _ogg_crc(page))
        out.append(bytes(page))
    return b"".join(out)


def _opus_head(channels: int = 1, family: int = 0) -> bytes:
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, 48_000, 0, family)
    if family:
        head += bytes([channels, 0]) + bytes(range(channels))
    return head


_OPUS_TAGS = b"OpusTags" + struct.pack("<I", 6) + b"hostil" + struct.pack("<I", 0)


def _silent_packet(codec: str, rate: int, frame_size: int, bit_rate: int) -> bytes:
    """One steady-state packet of digital silence from a real encoder."""
    ctx = av.CodecContext.create(codec, "w")
    assert isinstance(ctx, av.AudioCodecContext), codec
    ctx.sample_rate, ctx.layout, ctx.bit_rate = rate, "mono", bit_rate
    formats = ctx.codec.audio_formats
    assert formats, codec  # an audio encoder lists the sample formats it takes
    ctx.format = formats[0].name
    packets = []
    for _ in range(12):
        frame = av.AudioFrame(format=ctx.format.name, layout="mono", samples=frame_size)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = rate
        packets += ctx.encode(frame)
    return bytes(packets[-1])


def _ogg_opus_silence(seconds: float, granules: bool = True) -> bytes:
    """Hand-muxed OGG/Opus: the same 20 ms silent packet, ``seconds`` long."""
    packet = _silent_packet("libopus", 48_000, 960, 16_000)
    count = int(seconds * 50)
    pages = [_ogg_page([_opus_head()], 0, 7, 0, flags=2), _ogg_page([_OPUS_TAGS], 0, 7, 1)]
    per_page = 250
    for seq, first in enumerate(range(0, count, per_page), start=2):
        n = min(per_page, count - first)
        granule = (first + n) * 960 if granules else 0
        last = first + n >= count
        pages.append(_ogg_page([packet] * n, granule, 7, seq, flags=4 if last else 0))
    return b"".join(pages)


# --- FLAC frames ------------------------------------------------------------------------

def _flac_utf8(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    if n < 0x10000:
        return bytes([0xE0 | n >> 12, 0x80 | n >> 6 & 0x3F, 0x80 | n & 0x3F])
    return bytes([0xF0 | n >> 18, 0x80 | n >> 12 & 0x3F, 0x80 | n >> 6 & 0x3F, 0x80 | n & 0x3F])


def _flac_silence(seconds: float, declare_total: bool, rate: int = 48_000,
                  channels: int = 1) -> bytes:
    """16-bit FLAC of CONSTANT-zero frames of 65535 samples: 3 bytes per channel per frame."""
    block = 65535
    frames = int(seconds * rate / block)
    total = frames * block if declare_total else 0
    info = struct.pack(">HH", block, block) + b"\0" * 6  # min/max block, frame sizes unknown
    info += ((rate << 44) | ((channels - 1) << 41) | (15 << 36) | total).to_bytes(8, "big")
    out = bytearray(b"fLaC" + bytes([0x80, 0, 0, 34]) + info + b"\0" * 16)
    # Block size code 0111 (16-bit size-1 follows); 48 kHz has its own rate code, others
    # come from STREAMINFO; channels independent; 16 bits per sample.
    rate_code = 0b1010 if rate == 48_000 else 0
    fixed = bytes([0xFF, 0xF8, 0x70 | rate_code, (channels - 1) << 4 | 0b1000])
    for n in range(frames):
        header = fixed + _flac_utf8(n) + struct.pack(">H", block - 1)
        header += bytes([_crc8(header)])
        frame = header + b"\x00\x00\x00" * channels  # CONSTANT subframes, value 0
        out += frame + struct.pack(">H", _crc16(frame))
    return bytes(out)


# --- RIFF/WAVE --------------------------------------------------------------------------

def _wav(pcm: bytes, *, tag: int = 1, channels: int = 1, rate: int = 16_000, bits: int = 16,
         data_len: int | None = None, riff_len: int | None = None, extra: bytes = b"") -> bytes:
    align = max(1, channels * ((bits + 7) // 8)) & 0xFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * align) & 0xFFFFFFFF, align, bits)
    fmt += extra
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(pcm) if data_len is None else data_len) + pcm)
    return b"RIFF" + struct.pack("<I", len(body) if riff_len is None else riff_len) + body


def _pcm16(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    return (tone(seconds, rate) * 32767).astype("<i2").tobytes()


# --- MP4 boxes --------------------------------------------------------------------------

def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def _replace_box(data: bytes, path: list[bytes], new_body_of) -> bytes:
    """Rebuild ``data`` with the box at ``path`` given a new body; parent sizes follow."""
    out, at = bytearray(), 0
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        if size < 8:
            break
        body = data[at + 8:at + size]
        if kind == path[0]:
            if len(path) == 1:
                body = new_body_of(body)
            else:
                # Container boxes; meta/dref carry 4 or 8 bytes before their children.
                skip = {b"dref": 8, b"meta": 4}.get(kind, 0)
                body = body[:skip] + _replace_box(body[skip:], path[1:], new_body_of)
        out += _box(kind, body)
        at += size
    return bytes(out + data[at:])


def _alias_record(path: str) -> bytes:
    """A Mac 'alis' record as FFmpeg's mov demuxer parses it, with an absolute path."""
    volume = b"Macintosh HD"
    name = Path(path).name.encode()
    rec = (b"\0" * 10 + bytes([len(volume)]) + volume.ljust(27, b"\0") + b"\0" * 12
           + bytes([len(name)]) + name.ljust(63, b"\0") + b"\0" * 16
           + struct.pack(">hh", -1, -1) + b"\0" * 16)
    raw = path.encode()
    rec += struct.pack(">hH", 2, len(raw)) + raw + (b"\0" if len(raw) % 2 else b"")
    return rec + struct.pack(">hH", -1, 0)


def _m4a_with_dref(entry: bytes) -> bytes:
    data = _legit("m4a-aac")
    dref = struct.pack(">II", 0, 1) + entry
    path = [b"moov", b"trak", b"mdia", b"minf", b"dinf", b"dref"]
    # The muxer writes moov after mdat, so growing moov moves no sample offsets.
    assert data.index(b"mdat") < data.index(b"moov")
    return _replace_box(data, path, lambda _old: dref)


def _m4a_claiming(seconds: int) -> bytes:
    """The legit M4A with every duration field saying ``seconds``: the movie, track and
    media headers, the edit list, and the time-to-sample table (FFmpeg trusts the smallest of
    these, and clamps an absurd last delta, so every sample's delta lies)."""
    out = bytearray(_legit("m4a-aac"))
    rate, movie_scale = 44_100, struct.unpack_from(">I", out, out.find(b"mvhd") + 16)[0]
    for kind, offset, value in ((b"mvhd", 20, seconds * movie_scale),
                                (b"tkhd", 24, seconds * movie_scale),
                                (b"mdhd", 20, seconds * rate),
                                (b"elst", 12, seconds * movie_scale)):
        at = out.find(kind)
        assert out[at + 4] == 0, "version 0 header (32-bit durations)"
        struct.pack_into(">I", out, at + offset, value)
    at = out.find(b"stts")
    entries = struct.unpack_from(">I", out, at + 8)[0]
    table = [struct.unpack_from(">II", out, at + 12 + 8 * i) for i in range(entries)]
    delta = -(-seconds * rate // sum(count for count, _ in table))
    for i, (count, _) in enumerate(table):
        struct.pack_into(">II", out, at + 12 + 8 * i, count, delta)
    return bytes(out)


# --- the corpus, by theme ---------------------------------------------------------------

def _references() -> list[HostileFile]:
    """Scripts and playlists: decoding any of them means opening something else."""
    absolute = str(SAMPLE)
    hls = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
           "#EXTINF:3.0,\n{}\n#EXT-X-ENDLIST\n")
    sdp = ("v=0\no=- 0 0 IN IP4 127.0.0.1\ns=voice\nc=IN IP4 {}\nt=0 0\n"
           "m=audio {} RTP/AVP 0\n")
    concat = f"ffconcat version 1.0\nfile {SAMPLE_RELATIVE}\n"
    return [
        HostileFile("ffconcat-relative-path", concat.encode(), "refused",
                    "ffconcat script naming a real voice note by relative path (safe mode "
                    "allows it)", "voice.ffconcat"),
        HostileFile("ffconcat-absolute-path",
                    f"ffconcat version 1.0\nfile {absolute}\n".encode(), "refused",
                    "ffconcat script naming the repo's voice note by absolute path"),
        HostileFile("ffconcat-etc-passwd", b"ffconcat version 1.0\nfile /etc/passwd\n",
                    "refused", "ffconcat script reading /etc/passwd", "voice.txt"),
        HostileFile("ffconcat-file-url",
                    f"ffconcat version 1.0\nfile file:{SAMPLE_RELATIVE}\n".encode(), "refused",
                    "ffconcat script with a file: URL"),
        HostileFile("ffconcat-http-localhost",
                    f"ffconcat version 1.0\nfile {LOCAL_URL}\nduration 3\n".encode(), "refused",
                    "ffconcat script fetching from loopback (SSRF)"),
        HostileFile("hls-file-url", hls.format(f"file:{absolute}").encode(), "refused",
                    "HLS playlist whose segment is a file: URL", "voice.m3u8"),
        HostileFile("hls-http-localhost", hls.format(LOCAL_URL).encode(), "refused",
                    "HLS playlist whose segment is on loopback (SSRF)", "voice.m3u8"),
        HostileFile("hls-relative-path", hls.format(SAMPLE_RELATIVE).encode(), "refused",
                    "HLS playlist with a relative segment path"),
        HostileFile("hls-absolute-path", hls.format(absolute).encode(), "refused",
                    "HLS playlist with an absolute segment path", "voice.m3u"),
        HostileFile("sdp-udp-unicast", sdp.format("127.0.0.1", 5004).encode(), "refused",
                    "SDP description: FFmpeg binds UDP ports and waits (20 s here) for RTP",
                    "voice.sdp"),
        HostileFile("sdp-udp-multicast", sdp.format("239.1.2.3/16", 5006).encode(), "refused",
                    "SDP description joining a multicast group"),
        HostileFile("concat-protocol-url",
                    f"concat:{SAMPLE_RELATIVE}|/etc/passwd".encode(), "refused",
                    "concat: protocol URL as the file body"),
        HostileFile("file-url-text", f"file:{absolute}\n".encode(), "refused",
                    "a bare file: URL as the file body", "voice.url"),
        HostileFile("id3-then-ffconcat", _id3(b"") + concat.encode(), "refused",
                    "valid ID3v2 tag, then an ffconcat script (probing skips ID3)", "voice.mp3"),
        HostileFile("id3-magic-then-ffconcat", b"ID3\n" + concat.encode(), "refused",
                    "ffconcat script starting with the bytes 'ID3' (naive MP3 sniffers)",
                    "voice.mp3"),
        HostileFile("oggs-then-hls", b"OggS\n" + hls.format(SAMPLE_RELATIVE).encode(),
                    "refused", "OggS magic followed by an HLS playlist"),
        HostileFile("wav-riff-then-ffconcat",
                    b"RIFF" + struct.pack("<I", 4 + len(concat)) + b"WAVE" + concat.encode(),
                    "refused", "RIFF/WAVE header with no fmt chunk, then an ffconcat script",
                    "voice.wav"),
        HostileFile("m4a-dref-alias-external",
                    _m4a_with_dref(_box(b"alis", b"\0\0\0\0" + _alias_record(absolute))),
                    "refused", "M4A whose track data is in an external file (Mac alias dref to "
                    "the repo's voice note); FFmpeg leaves it empty unless enable_drefs",
                    "voice.m4a"),
        HostileFile("m4a-dref-url-external",
                    _m4a_with_dref(_box(b"url ", b"\0\0\0\0" + f"file://{absolute}\0".encode())),
                    "either", "M4A with a non-self-contained 'url ' dref (FFmpeg reads the own "
                    "mdat)", "voice.m4a"),
        HostileFile("ffmetadata", b";FFMETADATA1\ntitle=voice\n[CHAPTER]\nTIMEBASE=1/1000\n"
                    b"START=0\nEND=36000000\ntitle=ten hours\n", "refused",
                    "FFmpeg metadata file with a 10-hour chapter", "voice.txt"),
    ]


def _not_audio() -> list[HostileFile]:
    rng = np.random.default_rng(20240601)
    srt = b"1\n00:00:00,000 --> 00:00:02,000\nHello\n\n2\n00:00:02,500 --> 10:00:00,000\nbye\n"
    ansi = (b"\x1b[2J\x1b[H" + b"".join(b"\x1b[%dm##\x1b[0m" % (31 + i % 7) for i in range(400))
            + b"\n")
    midi = (b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + b"MTrk"
            + struct.pack(">I", 12) + b"\x00\x90\x3c\x40\x60\x80\x3c\x40\x00\xff\x2f\x00")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("voice.ogg", _legit("ogg-opus"))
    return [
        HostileFile("empty", b"", "refused", "zero bytes"),
        HostileFile("one-byte", b"\x00", "refused", "a single NUL byte"),
        HostileFile("nul-bytes", bytes(65536), "refused", "64 KiB of NUL bytes"),
        HostileFile("random-bytes", rng.integers(0, 256, 65536, np.uint8).tobytes(), "refused",
                    "64 KiB of seeded random bytes"),
        HostileFile("srt-subtitles", srt, "refused", "SRT subtitles with a 10-hour cue",
                    "voice.srt"),
        HostileFile("tty-plain-text", b"Hello, this is not a voice note at all.\n" * 80,
                    "refused", "plain text, bait for FFmpeg's tty demuxer", "voice.txt"),
        HostileFile("tty-ansi-art", ansi, "refused", "ANSI escape art (tty demuxer bait)",
                    "voice.ans"),
        HostileFile("html", b"<!DOCTYPE html><html><body><audio src='/etc/passwd'>"
                    b"</audio></body></html>\n", "refused", "an HTML page", "voice.html"),
        HostileFile("png-image", _png(), "refused", "a PNG image", "voice.png"),
        HostileFile("jpeg-image", _image("mjpeg", "mjpeg"), "refused", "a JPEG image",
                    "voice.jpg"),
        HostileFile("gif-image", _image("gif", "gif"), "refused", "a GIF image", "voice.gif"),
        HostileFile("mp4-video-only", _video_only_mp4(), "refused", "MP4 with video, no audio",
                    "voice.mp4"),
        HostileFile("midi", midi, "refused", "a Standard MIDI file", "voice.mid"),
        HostileFile("zip-with-ogg", zipped.getvalue(), "refused", "a zip holding a voice note",
                    "voice.zip"),
        HostileFile("pdf-header", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"
                    b"trailer\n<<>>\n%%EOF\n", "refused", "a PDF header", "voice.pdf"),
        HostileFile("data-uri-text", b"data:audio/ogg;base64,T2dnUwACAAAAAAAAAAA=", "refused",
                    "a data: URI as the body"),
    ]


def _mid_stream_changes() -> list[HostileFile]:
    """Joined encodes: legit audio whose rate or layout changes half-way."""
    def joined(fmt: str, codec: str, parts: list[tuple[int, str]]) -> bytes:
        return b"".join(encode(tone(1.0, rate, freq), rate, fmt, codec, layout, 64_000)
                        for (rate, layout), freq in zip(parts, (440.0, 660.0, 550.0)))
    return [
        HostileFile("mp3-rate-change", joined("mp3", "libmp3lame", [(44_100, "mono"),
                                                                   (22_050, "mono")]),
                    "decodes", "MP3, 44.1 kHz then 22.05 kHz (two files joined)", "voice.mp3"),
        HostileFile("mp3-layout-change", joined("mp3", "libmp3lame", [(44_100, "mono"),
                                                                     (44_100, "stereo")]),
                    "decodes", "MP3, mono then stereo", "voice.mp3"),
        HostileFile("mp3-rate-and-layout-changes",
                    joined("mp3", "libmp3lame", [(48_000, "stereo"), (16_000, "mono"),
                                                 (32_000, "stereo")]),
                    "decodes", "MP3, 48k stereo, 16k mono, 32k stereo", "voice.mp3"),
        HostileFile("aac-adts-rate-change", joined("adts", "aac", [(44_100, "mono"),
                                                                  (22_050, "mono")]),
                    "either", "ADTS AAC, 44.1 kHz then 22.05 kHz", "voice.aac"),
        HostileFile("aac-adts-layout-change", joined("adts", "aac", [(44_100, "mono"),
                                                                    (44_100, "stereo")]),
                    "either", "ADTS AAC, mono then stereo", "voice.aac"),
    ]


def _damaged() -> list[HostileFile]:
    rng = np.random.default_rng(7)
    out = []
    for kind, legit, cuts in (("ogg", "ogg-opus", (27, 60, None, -7)),
                              ("wav", "wav", (20, 44, None, -1)),
                              ("mp3", "mp3", (3, 200, None, -5)),
                              ("flac", "flac", (4, 42, None, -3)),
                              ("adts", "adts-aac", (5, None))):
        data = _legit(legit)
        for cut in cuts:
            at = len(data) // 3 if cut is None else cut % len(data)
            label = "third" if cut is None else f"end-{-cut}" if cut < 0 else str(cut)
            out.append(HostileFile(f"{kind}-truncated-{label}", data[:at], "either",
                                   f"legit {kind} cut to {at} of {len(data)} bytes",
                                   f"voice.{kind}"))
        # Garbage over the middle third: header intact, payload noise.
        spoiled = bytearray(data)
        third = len(data) // 3
        spoiled[third:2 * third] = rng.integers(0, 256, third, np.uint8).tobytes()
        out.append(HostileFile(f"{kind}-garbage-middle", bytes(spoiled), "either",
                               f"legit {kind} with its middle third overwritten by random bytes",
                               f"voice.{kind}"))
    # An OGG whose every page after the headers is random (valid page framing, bad CRCs).
    pages = _ogg_pages(_legit("ogg-opus"))
    noisy = b"".join(bytes(p) if i < 2 else bytes(p[:27 + p[26]]) + rng.integers(
        0, 256, len(p) - 27 - p[26], np.uint8).tobytes() for i, p in enumerate(pages))
    out.append(HostileFile("ogg-garbage-payloads", noisy, "either",
                           "OGG/Opus with every audio page's payload replaced by noise"))
    return out


def _wav_headers() -> list[HostileFile]:
    pcm = _pcm16()
    mp3_frames = _legit("mp3")
    bogus_guid = bytes(range(16))
    extensible = struct.pack("<HHI", 22, 16, 4) + bogus_guid
    return [
        HostileFile("wav-data-len-ffffffff", _wav(pcm, data_len=0xFFFFFFFF), "either",
                    "data chunk length 0xFFFFFFFF over 1 s of audio", "voice.wav"),
        HostileFile("wav-riff-len-ffffffff", _wav(pcm, riff_len=0xFFFFFFFF), "either",
                    "RIFF length 0xFFFFFFFF", "voice.wav"),
        HostileFile("wav-claims-2gb", _wav(pcm, data_len=0x7FFFFFF0, riff_len=0x7FFFFFFC),
                    "either", "header claims 2 GB (18 h) of data; 1 s present", "voice.wav"),
        HostileFile("wav-0-channels", _wav(pcm, channels=0), "refused", "0 channels",
                    "voice.wav"),
        HostileFile("wav-65535-channels", _wav(pcm, channels=65535), "refused",
                    "65535 channels", "voice.wav"),
        HostileFile("wav-0-hz", _wav(pcm, rate=0), "refused", "0 Hz sample rate", "voice.wav"),
        HostileFile("wav-1-hz", _wav(pcm, rate=1), "refused",
                    "1 Hz sample rate: 16000 samples claim 4.4 hours", "voice.wav"),
        HostileFile("wav-1e9-hz", _wav(pcm, rate=1_000_000_000), "either",
                    "1 GHz sample rate: 16 microseconds of audio", "voice.wav"),
        HostileFile("wav-0-bits", _wav(pcm, bits=0), "refused", "0 bits per sample",
                    "voice.wav"),
        HostileFile("wav-7-bits", _wav(pcm, bits=7), "either", "7 bits per sample",
                    "voice.wav"),
        HostileFile("wav-64-bits", _wav(pcm, bits=64), "either",
                    "64-bit integer PCM (pcm_s64le) over 16-bit data", "voice.wav"),
        HostileFile("wav-mp3-tag-0055", _wav(mp3_frames, tag=0x0055, channels=1, rate=44_100,
                                             bits=0), "either",
                    "format tag 0x0055: MP3 frames inside a WAV", "voice.wav"),
        HostileFile("wav-adpcm-tag-0002", _wav(pcm, tag=0x0002, bits=4,
                                               extra=struct.pack("<HH", 2, 1017)),
                    "refused", "format tag 0x0002 (MS ADPCM): a codec off the allow-list",
                    "voice.wav"),
        HostileFile("wav-bogus-tag", _wav(pcm, tag=0xBEEF), "refused",
                    "format tag 0xBEEF (no codec)", "voice.wav"),
        HostileFile("wav-extensible-bogus-guid", _wav(pcm, tag=0xFFFE, extra=extensible),
                    "refused", "WAVE_FORMAT_EXTENSIBLE with a made-up subformat GUID",
                    "voice.wav"),
        HostileFile("wav-chunk-skips-past-eof",
                    b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVE" + b"LIST"
                    + struct.pack("<I", 0xFFFFFFF0) + _wav(pcm)[12:], "refused",
                    "a LIST chunk claiming 4 GB hides the fmt chunk", "voice.wav"),
    ]


def _id3(body: bytes, size: int | None = None) -> bytes:
    n = len(body) if size is None else size
    syncsafe = bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])
    return b"ID3\x04\x00\x00" + syncsafe + body


def _id3_only() -> list[HostileFile]:
    text = b"\x03voice note"
    frame = b"TIT2" + struct.pack(">I", len(text)) + b"\0\0" + text
    return [
        HostileFile("id3-only", _id3(frame), "refused", "an ID3v2 tag and no MPEG frames",
                    "voice.mp3"),
        HostileFile("id3-claims-256mb", _id3(frame, size=0x0FFFFFFF), "refused",
                    "an ID3v2 tag claiming 256 MB, 30 bytes present", "voice.mp3"),
        HostileFile("id3-padding-then-nothing", _id3(frame + bytes(8000)), "refused",
                    "ID3v2 tag with 8 KB of padding and no frames", "voice.mp3"),
        HostileFile("id3v1-only", b"TAG" + b"voice".ljust(125, b"\0"), "refused",
                    "an ID3v1 tag only", "voice.mp3"),
    ]


def _bombs() -> list[HostileFile]:
    mp3_silence = _silent_packet("libmp3lame", 8_000, 576, 8_000)
    mp3_frames = mp3_silence * (1_500_000 // len(mp3_silence))
    return [
        HostileFile("flac-bomb-10h-silence", _flac_silence(10 * 3600, declare_total=True),
                    "refused", "10 h of 48 kHz silence in 390 KB of FLAC, length declared",
                    "voice.flac"),
        HostileFile("flac-bomb-10h-undeclared", _flac_silence(10 * 3600, declare_total=False),
                    "refused", "10 h of FLAC silence, total samples 'unknown'", "voice.flac"),
        HostileFile("flac-384khz-8ch-110s", _flac_silence(110, True, rate=384_000, channels=8),
                    "either", "110 s (under the limit) of 8-channel 384 kHz FLAC silence: "
                    "costly to decode and resample, cheap to send", "voice.flac"),
        HostileFile("flac-384khz-8ch-1h-undeclared",
                    _flac_silence(3600, False, rate=384_000, channels=8), "refused",
                    "1 h of 8-channel 384 kHz FLAC silence, length unknown: the duration "
                    "limit must stop it early", "voice.flac"),
        HostileFile("opus-bomb-10min", _ogg_opus_silence(600), "refused",
                    "10 min of OGG/Opus silence, true granules"),
        HostileFile("opus-bomb-10min-no-granules", _ogg_opus_silence(600, granules=False),
                    "refused", "10 min of OGG/Opus silence, every granule 0 (no duration)"),
        HostileFile("mp3-bomb-silence", mp3_frames, "refused",
                    f"{len(mp3_frames) // len(mp3_silence) * 0.072 / 60:.0f} min of 8 kHz "
                    "MP3 silence in 1.5 MB", "voice.mp3"),
    ]


def _granule_lies() -> list[HostileFile]:
    data = _legit("ogg-opus")
    count = len(_ogg_pages(data))
    rng = np.random.default_rng(3)
    garbage = [int(x) for x in rng.integers(-2**62, 2**62, count)]
    return [
        HostileFile("ogg-granule-last-page-10h",
                    _regranule(data, lambda i, old: 10 * 3600 * 48_000 if i == count - 1
                               else old),
                    "either", "2 s of OGG/Opus whose last page claims 10 hours"),
        HostileFile("ogg-granule-all-zero", _regranule(data, lambda i, old: 0), "either",
                    "OGG/Opus with granule 0 on every page"),
        HostileFile("ogg-granule-negative", _regranule(data, lambda i, old: -(10**12)),
                    "either", "OGG/Opus with large negative granules"),
        HostileFile("ogg-granule-garbage", _regranule(data, lambda i, old: garbage[i]),
                    "either", "OGG/Opus with random 63-bit granules"),
        HostileFile("ogg-opus-headers-only", b"".join(bytes(p) for p in _ogg_pages(data)[:2]),
                    "refused", "OpusHead and OpusTags pages, no audio"),
        HostileFile("ogg-opus-255-channels",
                    _ogg_page([_opus_head(255, family=255)], 0, 9, 0, flags=2)
                    + _ogg_page([_OPUS_TAGS], 0, 9, 1)
                    + b"".join(bytes(p) for p in _ogg_pages(data)[2:]), "refused",
                    "OpusHead claiming 255 channels (mapping family 255) over mono packets"),
    ]


def _containers_and_codecs() -> list[HostileFile]:
    return [
        HostileFile("m4a-claims-10h", _m4a_claiming(10 * 3600), "either",
                    "2 s M4A whose headers, edit list and sample deltas claim 10 hours",
                    "voice.m4a"),
        HostileFile("m4a-alac", encode(tone(1.0, 44_100), 44_100, "ipod", "alac"), "refused",
                    "Apple Lossless in M4A: a codec off the allow-list", "voice.m4a"),
        HostileFile("webm-pcm-s16le", encode(tone(1.0, 16_000), 16_000, "matroska",
                                              "pcm_s16le"),
                    "decodes", "PCM in Matroska (allowed codec in an allowed container)",
                    "voice.mkv"),
    ]


def _wrong_names() -> list[HostileFile]:
    """Legit two-second voice notes under names that lie: the bytes decide."""
    return [
        HostileFile("ogg-named-mp3", _legit("ogg-opus"), "decodes", "OGG/Opus named .mp3",
                    "voice.mp3"),
        HostileFile("wav-named-png", _legit("wav"), "decodes", "WAV named .png", "photo.png"),
        HostileFile("mp3-named-ogg", _legit("mp3"), "decodes", "MP3 named .ogg"),
        HostileFile("flac-named-wav", _legit("flac"), "decodes", "FLAC named .wav",
                    "voice.wav"),
        HostileFile("m4a-named-txt", _legit("m4a-aac"), "decodes", "M4A/AAC named .txt",
                    "notes.txt"),
        HostileFile("webm-named-m3u8", _legit("webm-opus"), "decodes", "WebM/Opus named .m3u8",
                    "voice.m3u8"),
        HostileFile("adts-named-sdp", _legit("adts-aac"), "decodes", "ADTS AAC named .sdp",
                    "voice.sdp"),
        HostileFile("mp3-after-id3", _id3(b"\0" * 300) + _legit("mp3"), "decodes",
                    "MP3 behind an ID3v2 tag with padding", "voice.mp3"),
    ]
