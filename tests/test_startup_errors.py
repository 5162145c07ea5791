"""Configuration mistakes end in one short line naming the setting or path, never a traceback."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from bot.infra.startup import ConfigError, explain_failure, preflight
from tests.conftest import MODEL_CACHE, make_settings

PASSWORD = "s3cretpw"
RUNS_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# Root ignores file permissions; without these two capabilities it obeys them like anyone.
WITHOUT_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-fowner"]


@functools.cache
def permissions_apply() -> bool:
    if not RUNS_AS_ROOT:
        return True
    return shutil.which("setpriv") is not None and subprocess.run(
        [*WITHOUT_OVERRIDE, "true"], capture_output=True).returncode == 0


def chatman(tmp_path: Path, *args: str, unprivileged: bool = False,
            **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in tmp_path, with only the CHATMAN_* variables given here."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("CHATMAN_", "TELEGRAM_", "DISCORD_"))}
    environ.update(CHATMAN_DATA_DIR=str(tmp_path / "data"),
                   CHATMAN_MODEL_CACHE_DIR=str(MODEL_CACHE), HF_HUB_OFFLINE="1")
    environ.update(env)
    prefix = WITHOUT_OVERRIDE if unprivileged and RUNS_AS_ROOT else []
    return subprocess.run([*prefix, sys.executable, "-m", "adapters", *args], cwd=tmp_path,
                          env=environ, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *named: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert len(output.splitlines()) <= 3, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for name in named:
        assert name in errors[0], errors[0]
    assert PASSWORD not in output
    return errors[0]


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-folder"
    path.write_text("a regular file\n")
    return path


# --- the data folder --------------------------------------------------------------------------
@pytest.mark.parametrize("command", [("models", "list"), ("db", "current"), ("admin", "models")])
def test_a_data_dir_under_a_regular_file(tmp_path, a_file, command):
    data = a_file / "data"  # can't be created, by root either
    result = chatman(tmp_path, *command, CHATMAN_DATA_DIR=str(data))
    line = assert_one_line_error(result, f"CHATMAN_DATA_DIR={data}", "not writable")
    assert f"{a_file} is a file, not a folder" in line


def test_a_data_dir_that_is_a_regular_file(tmp_path, a_file):
    result = chatman(tmp_path, "models", "list", CHATMAN_DATA_DIR=str(a_file))
    assert_one_line_error(result, f"CHATMAN_DATA_DIR={a_file}", "is a file, not a folder")


def test_a_read_only_data_dir(tmp_path):
    if not permissions_apply():
        pytest.skip("root, and setpriv can't drop CAP_DAC_OVERRIDE here")
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o500)
    try:
        result = chatman(tmp_path, "db", "current", unprivileged=True)
    finally:
        data.chmod(0o700)
    assert_one_line_error(result, f"CHATMAN_DATA_DIR={data}", "Permission denied")


def test_a_read_only_sqlite_file(tmp_path):
    if not permissions_apply():
        pytest.skip("root, and setpriv can't drop CAP_DAC_OVERRIDE here")
    assert chatman(tmp_path, "db", "upgrade").returncode == 0
    db = tmp_path / "data" / "chatman.db"
    db.chmod(0o400)  # it opens and reads fine: only a write shows the problem
    try:
        result = chatman(tmp_path, "models", "list", unprivileged=True)
    finally:
        db.chmod(0o600)
    assert_one_line_error(result, f"the SQLite database {db} is read-only")


def test_a_model_cache_under_a_regular_file(tmp_path, a_file):
    cache = a_file / "models"
    result = chatman(tmp_path, "models", "list", CHATMAN_MODEL_CACHE_DIR=str(cache))
    assert_one_line_error(result, f"CHATMAN_MODEL_CACHE_DIR={cache}")


# --- the database -----------------------------------------------------------------------------
@pytest.fixture
def corrupt_db(tmp_path: Path) -> Path:
    db = tmp_path / "data" / "chatman.db"
    db.parent.mkdir()
    db.write_bytes(b"this is no SQLite file\x00\xff" * 200)
    return db


@pytest.mark.parametrize("command", [("db", "current"), ("db", "upgrade"), ("models", "list"),
                                     ("admin", "models")])
def test_a_corrupt_sqlite_file(tmp_path, corrupt_db, command):
    result = chatman(tmp_path, *command)
    line = assert_one_line_error(result, str(corrupt_db), "is not a database")
    assert "move it aside or set CHATMAN_DATABASE_URL" in line


def test_run_fails_on_a_corrupt_database_before_loading_any_model(tmp_path, corrupt_db):
    result = chatman(tmp_path, "run", CHATMAN_WEB_ENABLED="false",
                     TELEGRAM_BOT_TOKEN="123:never-used")
    assert_one_line_error(result, str(corrupt_db), "is not a database")
    assert "loading" not in result.stderr  # the ASR/LLM/TTS loads log "loading …"


@pytest.mark.parametrize("url", [f"postgresql+psycopg://user:{PASSWORD}@host:notaport/db",
                                 "not a url at all"], ids=["bad-port", "not-a-url"])
@pytest.mark.parametrize("command", [("db", "current"), ("models", "list")])
def test_a_malformed_database_url(tmp_path, url, command):
    result = chatman(tmp_path, *command, CHATMAN_DATABASE_URL=url)
    line = assert_one_line_error(result, "CHATMAN_DATABASE_URL", "not a database URL")
    assert url not in line


def test_an_unreachable_database_is_named_without_its_password(tmp_path):
    url = f"postgresql+psycopg://bot:{PASSWORD}@127.0.0.1:9/none"  # nothing listens on port 9
    result = chatman(tmp_path, "models", "list", CHATMAN_DATABASE_URL=url)
    assert_one_line_error(result, "cannot connect to the database",
                          "postgresql+psycopg://bot:***@127.0.0.1:9/none")


# --- persona and plain setting values ---------------------------------------------------------
def test_a_missing_persona(tmp_path):
    result = chatman(tmp_path, "models", "list", CHATMAN_PERSONA="nobody")
    assert_one_line_error(result, "CHATMAN_PERSONA=nobody", "no persona 'nobody'",
                          "available: manman")


def test_a_persona_dir_without_the_persona(tmp_path):
    empty = tmp_path / "personas"
    empty.mkdir()
    result = chatman(tmp_path, "admin", "models", CHATMAN_PERSONA_DIR=str(empty))
    assert_one_line_error(result, "CHATMAN_PERSONA=manman", f"CHATMAN_PERSONA_DIR={empty}")


def test_db_commands_need_no_persona(tmp_path):
    result = chatman(tmp_path, "db", "current", CHATMAN_PERSONA="nobody")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("variable", "value"), [("CHATMAN_MAX_UPLOAD_MB", "lots"),
                                                 ("TELEGRAM_WEBHOOK_PORT", "0")])
def test_an_invalid_value_names_its_variable(tmp_path, variable, value):
    result = chatman(tmp_path, "models", "list", **{variable: value})
    assert_one_line_error(result, f"invalid settings: {variable}={value!r}")


# --- in process ----------------------------------------------------------------------------------
def test_preflight_passes_on_a_fresh_data_dir(tmp_path):
    preflight(make_settings(tmp_path / "data"))
    assert (tmp_path / "data").is_dir()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["chatman.db"]  # no probe left


def test_a_config_error_is_one_line(tmp_path, a_file):
    with pytest.raises(ConfigError) as caught:
        preflight(make_settings(a_file / "data"))
    assert "\n" not in str(caught.value) and "CHATMAN_DATA_DIR" in str(caught.value)


def test_a_late_database_error_is_explained_with_the_path(tmp_path):
    settings = make_settings(tmp_path / "data")
    error = OperationalError("INSERT …", {}, Exception("attempt to write a readonly database"))
    message = explain_failure(error, settings)
    assert message == (f"the SQLite database {tmp_path / 'data' / 'chatman.db'} is read-only "
                       "(attempt to write a readonly database): make the file and its folder "
                       "writable or set CHATMAN_DATABASE_URL")
    assert explain_failure(RuntimeError("something else"), settings) is None
    missing = FileNotFoundError(2, "No such file or directory", str(tmp_path / "voice.onnx"))
    explained = explain_failure(missing, settings)
    assert explained is not None and str(tmp_path / "voice.onnx") in explained
