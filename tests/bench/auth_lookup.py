"""What one credential lookup costs the server when its cache misses.

    python -m tests.bench.auth_lookup --agents 200 --rounds 5

A fresh SQLite database (``db upgrade`` in a subprocess), ``--agents`` enrolled through the
service layer, then ``Authenticator.identify`` for each of them ``--rounds`` times with the
cache off (a lifetime of 0 s): CPU and wall time per lookup, three times. A figure printer,
not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

from server.domain import HostFacts
from server.services import enrollment
from server.services.agents import Authenticator
from server.storage.db import create_engine_for_url, make_sessionmaker


async def measure(agents: int, rounds: int) -> None:
    workdir = tempfile.mkdtemp(prefix="flagpost-bench-auth-")
    url = f"sqlite+aiosqlite:///{workdir}/auth.db"
    env = dict(os.environ, FLAGPOST_DATABASE_URL=url, FLAGPOST_STATE_DIR=workdir)
    subprocess.run(
        [sys.executable, "-m", "server", "db", "upgrade"], env=env, check=True, capture_output=True
    )
    engine = create_engine_for_url(url)
    sessions = make_sessionmaker(engine)
    try:
        token = await enrollment.create_token(sessions, uses=agents)
        credentials = [
            (await enrollment.enroll(sessions, token, HostFacts(hostname=f"h{i}")))[1]
            for i in range(agents)
        ]
        authenticator = Authenticator(sessions, ttl_seconds=0)
        for credential in credentials:  # warm: statements compiled, pool filled
            await authenticator.identify(credential)
        for _ in range(3):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(rounds):
                for credential in credentials:
                    await authenticator.identify(credential)
            n = rounds * len(credentials)
            print(
                f"identify, cache missed: {(time.process_time() - cpu) / n * 1e6:,.0f} us CPU, "
                f"{(time.perf_counter() - wall) / n * 1e6:,.0f} us wall per lookup"
            )
    finally:
        await engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description="credential lookup cost")
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(measure(args.agents, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
