"""The HTTP client of the webhook dispatcher (``server.services.webhook_dispatcher``): one
POST with a total timeout, no redirects followed (a receiver cannot bounce the request to
another address), at most :data:`MAX_ERROR_BODY` bytes of an error answer read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp

from server.services.webhook_dispatcher import SendResult

MAX_ERROR_BODY = 200


class HttpSender:
    """One ``aiohttp.ClientSession`` for every delivery of a server process."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> SendResult:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=20), trust_env=False
            )
        started = time.monotonic()
        try:
            async with self._http.post(
                url,
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as reply:
                status = reply.status
                error = ""
                if not 200 <= status < 300:
                    text = (await reply.content.read(MAX_ERROR_BODY)).decode("utf-8", "replace")
                    error = f"HTTP {status}: {' '.join(text.split())}".strip()
        except TimeoutError:
            return SendResult(None, f"no answer within {timeout_s:g} s", _ms(started))
        except aiohttp.ClientError as exc:
            return SendResult(None, f"{type(exc).__name__}: {exc}", _ms(started))
        except (OSError, asyncio.IncompleteReadError) as exc:
            return SendResult(None, f"{type(exc).__name__}: {exc}", _ms(started))
        return SendResult(status, error, _ms(started))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
