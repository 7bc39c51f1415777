"""The per-account login limit: failures from many addresses at one user name get 429.

Real server on port 0, real HTTP logins. The server takes the client address from the socket
(``request.remote``), so each "attacker" binds its client socket to its own loopback address
(127.0.0.2, 127.0.0.3, ...: all loopback on Linux). The limiter's clock is the only thing the
test moves, to let the window pass without waiting a minute.
"""

from __future__ import annotations

from dataclasses import replace

import aiohttp
from server_testlib import _HIDDEN_CSRF, WebAccount, create_web_user

from server.app import RunningServer, start_server
from server.config import ServerConfig
from server.web.login import LOGIN_LIMITS

ACCOUNT_LIMIT = 6  # below what the per-address limits allow from 2 addresses (2 x 5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def attempt(
    server: RunningServer, address: str, name: str, password: str
) -> aiohttp.ClientResponse:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as http:
        async with http.get(f"{server.web_url}/login") as reply:
            match = _HIDDEN_CSRF.search(await reply.text())
        assert match is not None
        form = {"name": name, "password": password, "csrf_token": match.group(1), "next": "/"}
        async with http.post(f"{server.web_url}/login", data=form, allow_redirects=False) as reply:
            await reply.read()
            return reply


async def test_many_addresses_guessing_one_account_are_slowed_then_the_owner_gets_in(
    server_config: ServerConfig,
) -> None:
    config = replace(server_config, login_account_rate_per_minute=ACCOUNT_LIMIT)
    server = await start_server(config)
    try:
        clock = Clock()
        limits = server.app[LOGIN_LIMITS]
        for limiter in (limits.per_account, limits.per_address, limits.per_user):
            limiter.clock = clock
        owner: WebAccount = await create_web_user(server, "viewer")
        statuses: list[tuple[str, int]] = []
        for i in range(ACCOUNT_LIMIT):  # 3 failures each from 2 addresses: no per-address 429
            address = f"127.0.0.{2 + i % 2}"
            reply = await attempt(server, address, owner.name, f"guess-{i}")
            statuses.append((address, reply.status))
        assert [status for _, status in statuses] == [401] * ACCOUNT_LIMIT

        # The account is now limited from everywhere: a fresh address, even the owner's
        # right password, gets 429 with Retry-After (the password is not even checked).
        for address in ("127.0.0.4", "127.0.0.5"):
            reply = await attempt(server, address, owner.name, "guess-more")
            assert reply.status == 429
            assert 0 < int(reply.headers["Retry-After"]) <= 60
        reply = await attempt(server, "127.0.0.6", owner.name, owner.password)
        assert reply.status == 429
        assert "too many login (per account) attempts" in await reply.text()
        # Another account is not affected.
        other = await create_web_user(server, "viewer")
        assert (await attempt(server, "127.0.0.4", other.name, other.password)).status == 303

        clock.now += 61  # the window has passed: the owner logs in
        assert (await attempt(server, "127.0.0.6", owner.name, owner.password)).status == 303
    finally:
        await server.stop()
