"""A round-robin HTTP reverse proxy over real HTTP: the load balancer in front of replicas.

Each request goes to the next backend in turn, whole (method, path, query, headers, body),
and the backend's answer comes back as it was. A backend that refuses the connection, resets
it or hangs up before answering gets its request answered 502 (504 after ``timeout``): the
proxy never retries, so the client sees the failure and does its own retrying (Telegram
redelivers), as behind a real load balancer that does not retry POSTs. Backends may be added
and removed while it runs, as replicas restart on new ports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.fakes import LocalServer

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP libraries set again themselves.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}
# aiohttp's server hands over a request body already decoded, so its encoding is not passed
# on; an answer's body is passed on as it came (not decoded), its encoding with it.
NOT_FORWARDED = HOP_BY_HOP | {"content-encoding"}


@dataclass
class BackendStats:
    #: requests sent to this backend
    requests: int = 0
    #: of them, those that got no answer (refused, reset, timed out)
    failures: int = 0
    #: the answers' statuses, 502/504 for failures
    statuses: Counter[int] = field(default_factory=Counter)


@dataclass(frozen=True)
class Forwarded:
    """One request as the proxy passed it on."""

    backend: str
    method: str
    path_qs: str
    status: int
    #: why there was no answer ("refused", "closed", "timeout"), None when there was one
    error: str | None
    body: bytes


class RoundRobinProxy(LocalServer):
    def __init__(self, backends: Iterable[str] = (), timeout: float = 60.0) -> None:
        #: backend base URLs ("http://127.0.0.1:8081"); a request's path is appended to them
        self.backends: list[str] = [b.rstrip("/") for b in backends]
        self.timeout = timeout
        self.stats: dict[str, BackendStats] = {b: BackendStats() for b in self.backends}
        #: every request, in the order they were answered
        self.log: list[Forwarded] = []
        self._turn = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL: give it a path (``proxy.url + "/telegram"``)."""
        return f"http://127.0.0.1:{self.port}"

    def add_backend(self, base_url: str) -> None:
        base_url = base_url.rstrip("/")
        if base_url not in self.backends:
            self.backends.append(base_url)
        self.stats.setdefault(base_url, BackendStats())

    def remove_backend(self, base_url: str) -> None:
        """No new requests go there; those in flight finish (or fail) as they will."""
        base_url = base_url.rstrip("/")
        if base_url in self.backends:
            self.backends.remove(base_url)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._forward)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().stop()

    def _next_backend(self) -> str | None:
        if not self.backends:
            return None
        backend = self.backends[self._turn % len(self.backends)]
        self._turn += 1
        return backend

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        backend = self._next_backend()
        if backend is None:
            return web.Response(status=503, text="no backend")
        stats = self.stats[backend]
        stats.requests += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        if self._session is None:
            # A fresh connection per request: a pooled one the backend has just closed would
            # fail a request it never saw, a 502 no replica caused.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                auto_decompress=False)
        error: str | None = None
        try:
            async with self._session.request(
                    request.method, backend + request.path_qs, data=body, headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as answer:
                content = await answer.read()
                response = web.Response(status=answer.status, reason=answer.reason, body=content,
                                        headers={k: v for k, v in answer.headers.items()
                                                 if k.lower() not in HOP_BY_HOP})
        except TimeoutError:
            error, response = "timeout", web.Response(status=504, text="backend timed out")
        except aiohttp.ClientConnectorError:
            error, response = "refused", web.Response(status=502, text="backend refused")
        except aiohttp.ClientError:
            error, response = "closed", web.Response(status=502, text="backend hung up")
        if error is not None:
            stats.failures += 1
        stats.statuses[response.status] += 1
        self.log.append(Forwarded(backend, request.method, request.path_qs, response.status,
                                  error, body))
        return response
