"""Connection-level limits for the web console, below FastAPI.

- :class:`adapters.http_server.HeaderTimeoutH11` (every server of ours uses it)
  closes a connection whose request headers have not all arrived within a time limit (uvicorn
  has a keep-alive timeout but none for slow or missing headers, so a thousand half-open
  connections would stay open for ever).
- :class:`RequestLimits` wraps the ASGI app: the body may not grow past a size limit whatever
  ``Content-Length`` or ``Transfer-Encoding`` claim (it is counted as it streams in, so no
  spooled temp file grows past the limit either), a body must keep arriving (idle timeout) and
  be complete within a total time, and the ``Host`` header must name this console (a
  DNS-rebinding page in a browser can't drive a loopback console through another name).

Refusals are JSON ``{"error": …}`` like every other answer of the console.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class _Refused(Exception):
    """The body broke a limit; the refusal was already sent."""


def allowed_hosts(web_host: str, extra: str) -> frozenset[str]:
    names = {*LOOPBACK_NAMES, *(h.strip().lower() for h in extra.split(",") if h.strip())}
    if web_host not in ("0.0.0.0", "::", ""):
        names.add(web_host.lower())
    return frozenset(names)


_HOST = re.compile(r"^(?P<name>\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::\d{1,5})?$")


def host_name(value: str) -> str:
    """``Host`` header → name without port (``[::1]:8765`` → ``[::1]``); "" if malformed."""
    found = _HOST.match(value.strip().lower())
    return found["name"] if found else ""


class RequestLimits:
    def __init__(self, app: ASGIApp, *, hosts: Iterable[str],
                 body_limit: Callable[[str], int], body_timeout: float,
                 idle_timeout: float = 10.0) -> None:
        self.app = app
        self.hosts = frozenset(hosts)
        self.body_limit = body_limit
        self.body_timeout = body_timeout
        self.idle_timeout = min(idle_timeout, body_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            log.warning("web: refused %s %s for Host %r (not in the allow-list; see "
                        "CHATMAN_WEB_ALLOWED_HOSTS)", scope.get("method"), path, host[:80])
            await _json(send, 421, "This console does not answer to that host name.")
            return
        limit = self.body_limit(path)
        declared = headers.get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            log.info("web: refused %s: declared body of %s bytes > %d", path, declared[:20], limit)
            await _json(send, 413, _too_big(limit))
            return

        responded = False
        received = 0
        body_done = False
        deadline = time.monotonic() + self.body_timeout
        refused = False  # we sent the answer ourselves (408/413)

        async def guarded_send(message: Message) -> None:
            nonlocal responded
            if refused:  # we answered already: the app's own answer goes nowhere
                return
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        async def refuse(status: int, text: str) -> None:
            nonlocal responded, refused
            if not responded:
                responded = refused = True
                await _json(send, status, text)
            raise _Refused

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body, receive() only waits for a disconnect
                return await receive()
            wait = min(self.idle_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.001))
            except TimeoutError:
                log.info("web: %s body did not arrive in time (%d bytes so far)", path, received)
                await refuse(408, "The upload was too slow; please try again.")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    log.info("web: refused %s: body passed %d bytes while streaming", path, limit)
                    await refuse(413, _too_big(limit))
                body_done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Refused:
            pass
        except Exception:
            if not responded:
                raise
            # The app failed after we refused its request: nothing more to tell anybody.
            log.debug("web: app error after a refusal", exc_info=True)


def _too_big(limit: int) -> str:
    return f"That upload is too big; I accept up to {limit / 2**20:.0f} MB."


async def _json(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
