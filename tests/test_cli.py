"""The `chatman` console script, run as a user runs it."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest

from tests.conftest import MODEL_CACHE, REPO
from tests.speech_checks import recall

SAMPLE = REPO / "persona" / "manman" / "samples" / "question.ogg"


def chatman(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CHATMAN_")}
    environ.update(
        CHATMAN_DATA_DIR=str(tmp_path / "data"),
        CHATMAN_MODEL_CACHE_DIR=str(MODEL_CACHE),
        CHATMAN_LLM_TEMPERATURE="0",
        CHATMAN_LLM_MAX_NEW_TOKENS="24",
        # The base model's own answers, unless a test is about the shipped starter persona.
        CHATMAN_STARTER_PERSONA="false",
        HF_HUB_OFFLINE="1",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "adapters", *args], cwd=tmp_path, env=environ,
        capture_output=True, text=True, timeout=300,
    )


def test_ask_with_the_demo_question_prints_json_and_writes_the_voice_note(tmp_path):
    out = tmp_path / "reply.ogg"
    result = chatman(tmp_path, "ask", "--audio", str(SAMPLE), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert recall("who are you and what do you do", payload["transcript"]) >= 0.8
    assert payload["language"] == "en" and payload["reply"]
    assert payload["audio"] == str(out) and out.read_bytes()[:4] == b"OggS"
    with av.open(io.BytesIO(out.read_bytes())) as c:
        assert c.streams.audio[0].codec_context.name == "opus"
    assert payload["duration_s"] > 0.5
    assert set(payload["timings_ms"]) == {"decode", "asr", "prompt", "first_token", "llm",
                                          "first_audio", "tts", "encode", "total"}

    # Continue the same conversation by id: the store now holds both turns of it.
    again = chatman(tmp_path, "ask", "--text", "Thanks!", "--chat-id", payload["chat_id"], "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["exchange_id"] == payload["exchange_id"] + 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "That audio file was empty."),
        (b"just some text pretending to be a voice note\n" * 5, "couldn't read that file as audio"),
    ],
    ids=["zero-bytes", "text-file"],
)
def test_ask_with_bad_audio_exits_non_zero_with_one_line(tmp_path, content, message):
    bad = tmp_path / "voice.ogg"
    bad.write_bytes(content)
    result = chatman(tmp_path, "ask", "--audio", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert "Traceback" not in result.stderr
    assert any("refused input" in line for line in lines), "and a log line says why"


def test_ask_needs_exactly_one_input(tmp_path):
    result = chatman(tmp_path, "ask")
    assert result.returncode == 2 and "exactly one of" in result.stderr
    missing = chatman(tmp_path, "ask", "--audio", str(tmp_path / "nope.ogg"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_db_upgrade_and_current(tmp_path):
    before = chatman(tmp_path, "db", "current")
    assert "(empty database)" in before.stdout and "needs `chatman db upgrade`" in before.stdout
    assert chatman(tmp_path, "db", "upgrade").returncode == 0
    after = chatman(tmp_path, "db", "current")
    assert re.match(r"current: (\w+)  head: \1  \(up to date\)", after.stdout), after.stdout
    step = chatman(tmp_path, "db", "downgrade", "-1")
    assert step.returncode == 0 and "needs `chatman db upgrade`" in chatman(tmp_path, "db", "current").stdout
    down = chatman(tmp_path, "db", "downgrade", "base")
    assert down.returncode == 0 and "schema now at (empty)" in down.stdout


def test_doctor_passes_with_the_starter_models(tmp_path):
    chatman(tmp_path, "db", "upgrade")
    result = chatman(tmp_path, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("database", "persona", "asr", "llm", "tts"):
        assert f"ok   {check}" in result.stdout


def test_doctor_reports_failures_without_leaking_the_password(tmp_path):
    result = chatman(
        tmp_path, "doctor",
        CHATMAN_DATABASE_URL="postgresql+psycopg://bot:pa55-w0rd-x@127.0.0.1:9/none",
        CHATMAN_LLM_MODEL=str(tmp_path / "missing.gguf"),
        CHATMAN_TTS_BACKEND="chattts", CHATMAN_CHATTTS_PATH=str(tmp_path / "no-chattts"),
        COLUMNS="400",
    )
    assert result.returncode == 1
    assert "FAIL database" in result.stdout and "FAIL llm" in result.stdout
    assert "ok   asr" in result.stdout
    # ChatTTS can't load: the doctor says Piper is live instead, and why.
    # (the LLM isn't the English starter: Chinese is answered too, with its own voice)
    assert "ok   tts: piper:en_US-joe-medium (zh: fastspeech2-zh) (fallback: chattts failed to " \
           "load: FileNotFoundError" in result.stdout
    # ...and that the weights aren't there, file by file.
    assert "FAIL chattts weights:" in result.stdout
    assert "lacks asset/Decoder.safetensors" in result.stdout
    assert "pa55-w0rd-x" not in result.stdout + result.stderr
    assert "bot:***@127.0.0.1" in result.stdout
