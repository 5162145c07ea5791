"""Secrets never appear in any output: log lines, tracebacks, library loggers, CLI errors."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
import os
import sys
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from bot.infra import logs
from bot.infra.logs import LIBRARY_LOGGERS, configure_logging, mask
from tests.conftest import MODEL_CACHE

# Shaped like a real bot token: the colon is what URL encoding changes.
TOKEN = "123456789:AAE-s3cr3tT0ken_for-the-tests-only"
PASSWORD = "pa55/w0rd+x"
ENCODED = (quote(TOKEN, safe=""), quote_plus(TOKEN), quote(PASSWORD, safe=""),
           quote_plus(PASSWORD))


def leaks(text: str) -> list[str]:
    """The forms of a secret found in ``text`` (plain, percent-encoded, lower-case hex)."""
    forms = {TOKEN, PASSWORD, *ENCODED, *(f.replace("%3A", "%3a") for f in ENCODED)}
    return sorted(f for f in forms if f in text)


@pytest.fixture
def output(monkeypatch) -> Iterator[io.StringIO]:
    """configure_logging with our secrets, writing to a buffer; every logger restored after."""
    names = ["", *LIBRARY_LOGGERS, "telegram.ext.Application"]
    saved = {n: (lg.handlers[:], lg.filters[:], lg.level, lg.propagate)
             for n in names for lg in [logging.getLogger(n)]}
    # setattr to the current value: monkeypatch puts it back after the test.
    monkeypatch.setattr(logs, "_masker", logs._masker)
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)  # the handler's stream, and uvicorn's below
    configure_logging("DEBUG", [TOKEN, PASSWORD])
    yield buffer
    for name, (handlers, filters, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)
        logger.propagate = propagate


def test_mask_covers_plain_and_url_encoded_forms(output):
    url = f"https://api.telegram.org/bot{TOKEN}/getMe?password={quote_plus(PASSWORD)}"
    text = f"{url} {quote(url, safe='')} {quote(url)} {quote(url).lower()}"
    assert leaks(mask(text)) == []
    assert "https://api.telegram.org/bot***/getMe?password=***" in mask(text)
    assert mask("nothing secret here") == "nothing secret here"


def test_a_logged_traceback_never_shows_a_secret(output):
    url = f"http://127.0.0.1:9/bot{TOKEN}/getMe"

    def call_the_api(token: str = TOKEN) -> None:
        raise RuntimeError(f"The token `{token}` was rejected at {quote(url, safe='')} "
                           f"(password {PASSWORD})")

    try:
        call_the_api()
    except RuntimeError:
        logging.getLogger("chatman.test").exception("request to %s failed", url)
    logging.getLogger("chatman.test").handle(logging.makeLogRecord(
        {"name": "chatman.test", "levelno": logging.WARNING, "levelname": "WARNING",
         "msg": "with a stack", "stack_info": f"Stack (most recent call last):\n  {url}"}))

    text = output.getvalue()
    assert "Traceback (most recent call last)" in text and "RuntimeError: The token `***`" in text
    assert "request to http://127.0.0.1:9/bot***/getMe failed" in text
    assert "Stack (most recent call last)" in text
    assert leaks(text) == []


@pytest.mark.parametrize("name", ["uvicorn.error", "uvicorn.access", "telegram.ext.Application",
                                  "httpx", "discord", "sqlalchemy"])
def test_library_loggers_go_through_the_one_masking_handler(output, name):
    logger = logging.getLogger(name)
    try:
        raise ValueError(f"bad url http://h/bot{quote(TOKEN)}/x")
    except ValueError:
        logger.error("failed with %s", TOKEN, exc_info=True)
    text = output.getvalue()
    assert f"ERROR {name}: failed with ***" in text and "ValueError: bad url" in text
    assert leaks(text) == []
    assert logging.getLogger(name).handlers == [] or name == "telegram.ext.Application"
    assert logging.getLogger().handlers[0].formatter.__class__ is logs.MaskingFormatter


def test_handlers_libraries_installed_before_are_replaced_by_the_root_one(monkeypatch):
    stray = io.StringIO()
    httpx_logger = logging.getLogger("httpx")
    saved = httpx_logger.handlers[:], httpx_logger.propagate
    monkeypatch.setattr(logs, "_masker", logs._masker)
    httpx_logger.addHandler(logging.StreamHandler(stray))
    httpx_logger.propagate = False
    root = logging.getLogger()
    root_saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", [TOKEN])
        assert httpx_logger.handlers == [] and httpx_logger.propagate
    finally:
        httpx_logger.handlers[:], httpx_logger.propagate = saved
        root.handlers[:] = root_saved[0]
        root.setLevel(root_saved[1])
        httpx_logger.filters.clear()


def test_uvicorn_configuring_its_own_handlers_later_still_masks(output, monkeypatch):
    """A server built without log_config=None runs uvicorn's dictConfig after ours."""
    from uvicorn.config import LOGGING_CONFIG

    # uvicorn's handlers write to sys.stderr and sys.stdout as they are now: the buffer.
    monkeypatch.setattr(sys, "stderr", output)
    monkeypatch.setattr(sys, "stdout", output)
    logging.config.dictConfig(LOGGING_CONFIG)
    try:
        raise OSError(f"cannot bind for {TOKEN}")
    except OSError:
        logging.getLogger("uvicorn.error").exception("startup failed: %s", quote_plus(TOKEN))
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                                             f"/admin?token={TOKEN}", "1.1", 200)
    text = output.getvalue()
    assert "startup failed: ***" in text and "OSError: cannot bind for ***" in text
    assert "/admin?token=***" in text
    assert leaks(text) == []


# --- end to end: `chatman run` against a Bot API that refuses the token ----------------------
UNAUTHORIZED = {"ok": False, "error_code": 401, "description": "Unauthorized"}


@pytest.fixture
async def refusing_api() -> AsyncIterator[str]:
    """A local HTTP server answering every request 401, as the Bot API does a revoked token."""

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(UNAUTHORIZED, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


@pytest.mark.slow  # the app loads the models before the adapters start
@pytest.mark.timeout(300)
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_chatman_run_with_a_rejected_token_says_so_without_the_token(
        tmp_path, refusing_api, level):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("CHATMAN_", "TELEGRAM_", "DISCORD_"))}
    environ.update(CHATMAN_DATA_DIR=str(tmp_path / "data"),
                   CHATMAN_MODEL_CACHE_DIR=str(MODEL_CACHE), CHATMAN_WEB_ENABLED="false",
                   CHATMAN_LOG_LEVEL=level, TELEGRAM_BOT_TOKEN=TOKEN,
                   TELEGRAM_API_BASE_URL=f"{refusing_api}/bot",
                   TELEGRAM_FILE_BASE_URL=f"{refusing_api}/file/bot",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters", "run", cwd=tmp_path, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output = (await asyncio.wait_for(process.communicate(), 280))[0].decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 2, output  # a configuration mistake, said as one
    assert leaks(output) == [], output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(errors[0]) < 300, output
    assert errors[0].startswith("error: TELEGRAM_BOT_TOKEN was refused"), errors
    if level == "INFO":
        assert "Traceback" not in output, output
    else:  # the details are there for whoever asks for them, masked like the rest
        assert "Traceback (most recent call last)" in output, output


def test_an_unexpected_cli_error_is_one_masked_line_and_a_hint(output, monkeypatch):
    from adapters import cli

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(logging.getLogger("chatman"), "level", logging.INFO)
    code = cli._report(RuntimeError(f"could not reach http://h/bot{quote(TOKEN)}/x\nsecond line"))
    lines = err.getvalue().splitlines()
    assert code == 1
    assert lines == ["error: RuntimeError: could not reach http://h/bot***/x",
                     "hint: CHATMAN_LOG_LEVEL=DEBUG shows the traceback (secrets masked)"]
    # Typer's own handler would print the locals (settings, tokens) of every frame.
    assert cli.app.pretty_exceptions_enable is False
