"""The `make run` demo: a Flagpost server on SQLite in a temp dir and five local agents.

    healthy   a legacy v1 config that migrates to v4       (detection + execution success)
    invalid   a legacy config with a syntax error on line 3 (detection failed)
    readonly  a legacy config in a read-only directory    (execution failed, rolled back)
    current   a config already at v4                      (detection not needed)
    secrets   a legacy config whose database password and upstream token the old version
              never held (only verifiers): its run waits for input (AWAITING_INPUT) until an
              admin types them on the run page (the demo prints them)

The read-only failure is a real OS error: as root (which ignores permission bits) that agent
runs as the unprivileged user ``nobody`` through setpriv, from a world-readable copy of the agent
and its runtime in the demo dir (scripts/unprivileged.py), so it works wherever the checkout and
its venv live, even under a 0700 directory; as a normal user the directory's mode is enough.

The web needs a login: the demo creates an admin (``demo-admin``) and a viewer
(``demo-viewer``) with random passwords (``flagpost-server user create``, the password piped on
stdin) and prints both logins.

The server's and agents' output goes to ``logs/`` in the demo dir; the terminal gets the demo's
own lines and, once everything has started, one block with the URLs, logins and secrets to type.
Every child runs in its own session, so a Ctrl-C reaches only the demo, which stops them; the
demo dir is then removed unless ``--keep`` (``make run DEMO_ARGS=--keep``).

``--smoke`` waits until the five outcomes are in the History, prints them and exits (the demo test
uses it); otherwise the demo runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unprivileged import AgentRuntime, UnprivilegedError, prepare

from agent.specs.builtin import legacy_config_with_secrets

PY = sys.executable
LEGACY_CONFIG = """\
# aggregator agent configuration (legacy layout)
server_url = https://flagpost.example.net:50051
agent_token = {token}
check_interval = 300
log_level = info
"""
INVALID_CONFIG = """\
# aggregator agent configuration (legacy layout)
server_url = https://flagpost.example.net:50051
this line has no equals sign
check_interval = 300
"""
CURRENT_CONFIG = {
    "config_version": 4,
    "server": {"url": "https://flagpost.example.net:50051", "proxy": ""},
    "checkin": {"interval_seconds": 300},
    "logging": {"level": "info"},
    "secrets_file": "secrets.json",
}
HOSTNAMES = {
    "healthy": "web-01",
    "invalid": "db-02",
    "readonly": "cache-03",
    "current": "edge-04",
    "secrets": "vault-05",
}
# What the "secrets" agent's run asks for: random per demo, printed so the prompt can be answered.
DEMO_DB_PASSWORD = "db-" + secrets.token_hex(4)
DEMO_UPSTREAM_TOKEN = "upstream-" + secrets.token_hex(4)
EXPECTED = {
    "healthy": {"migration_detection_success", "migration_execution_success"},
    "invalid": {"migration_detection_failed"},
    "readonly": {"migration_execution_failed"},
    "current": {"migration_detection_not_needed"},
    "secrets": {"migration_detection_success"},  # then its run waits for input
}


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_agent_roots(base: Path, unprivileged: pwd.struct_passwd | None) -> dict[str, Path]:
    roots: dict[str, Path] = {}
    for name in EXPECTED:
        root = base / "agents" / name
        (root / "var" / "lib").mkdir(parents=True)
        (root / "etc").mkdir()
        # Each agent reports the host name its root declares, so the History tells them apart.
        (root / "etc" / "hostname").write_text(HOSTNAMES[name] + "\n")
        roots[name] = root
    for name in ("healthy", "invalid", "readonly"):
        legacy = roots[name] / "etc" / "aggregator"
        legacy.mkdir()
        text = INVALID_CONFIG if name == "invalid" else LEGACY_CONFIG.format(token=f"demo-{name}")
        (legacy / "agent.conf").write_text(text)
    current = roots["current"] / "etc" / "flagpost"
    current.mkdir()
    (current / "agent.json").write_text(json.dumps(CURRENT_CONFIG, indent=2) + "\n")
    secrets = current / "secrets.json"
    secrets.write_text(json.dumps({"agent_token": "demo-current"}) + "\n")
    secrets.chmod(0o600)
    waiting = roots["secrets"] / "etc" / "aggregator"
    waiting.mkdir()
    (waiting / "agent.conf").write_text(
        legacy_config_with_secrets(
            server_url="https://flagpost.example.net:50051",
            agent_token="demo-secrets",  # noqa: S106 (a placeholder, like the other agents')
            database_url="postgresql://fleet@db.example/fleet",
            database_password=DEMO_DB_PASSWORD,
            upstream_token=DEMO_UPSTREAM_TOKEN,
        )
    )

    # The read-only agent: its legacy config dir cannot be changed by the user it runs as.
    ro = roots["readonly"]
    (ro / "etc" / "flagpost").mkdir()
    if unprivileged is not None:
        for path in [ro, *ro.rglob("*")]:
            os.chown(path, unprivileged.pw_uid, unprivileged.pw_gid)
        os.chown(ro / "etc" / "aggregator", 0, 0)
        os.chown(ro / "etc" / "aggregator" / "agent.conf", 0, 0)
    (ro / "etc" / "aggregator").chmod(0o555)
    return roots


class Stop(Exception):
    """Ctrl-C (SIGINT) or SIGTERM reached the demo."""


class Signals:
    """SIGINT and SIGTERM raise ``Stop`` in the main thread, except while a child is being
    started: then the signal waits until the child is on the list the demo stops on exit."""

    def __init__(self) -> None:
        self.holding = False
        self.held: str | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)

    def ignore(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)

    def handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.holding:
            self.held = name
            return
        raise Stop(name)

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.held is not None:
            name, self.held = self.held, None
            raise Stop(name)


SIGNALS = Signals()


class Children:
    """The demo's server, agents and set-up commands, each in its own session: a Ctrl-C in
    the terminal reaches only the demo, which stops them (SIGTERM) and waits for them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, command: list[str], log: Path, *, stdin: int = subprocess.DEVNULL, **kw: Any
    ) -> subprocess.Popen[str]:
        """Start ``command`` with its output appended to ``log`` (stdout: ``kw`` may say)."""
        kw.setdefault("stdout", None)
        with log.open("a") as out, SIGNALS.hold():
            proc = subprocess.Popen(
                command,
                stdin=stdin,
                stdout=kw.pop("stdout") or out,
                stderr=out,
                text=True,
                start_new_session=True,
                **kw,
            )
            self.procs.append(proc)
        return proc

    def run(
        self, command: list[str], log: Path, *, stdin: str = "", capture: bool = False, **kw: Any
    ) -> str:
        """Run a set-up command to the end (output in ``log``; with ``capture`` its stdout is
        returned instead, for commands that print what the demo needs)."""
        pipe = subprocess.PIPE if capture else None
        proc = self.start(command, log, stdin=subprocess.PIPE, stdout=pipe, **kw)
        out, _ = proc.communicate(stdin, timeout=120)
        if proc.returncode != 0:
            shown = " ".join(command[command.index("-m") + 1 :] if "-m" in command else command)
            raise SystemExit(f"demo: `{shown}` exited {proc.returncode}; see {log}")
        return out or ""

    def stop(self) -> None:
        """SIGTERM to all still running, newest first, then wait; another Ctrl-C or 15 s
        kill them."""
        running = [p for p in reversed(self.procs) if p.poll() is None]
        for proc in running:
            proc.terminate()
        try:
            deadline = time.monotonic() + 15
            for proc in running:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except (Stop, subprocess.TimeoutExpired) as exc:
            why = "second Ctrl-C" if isinstance(exc, Stop) else "still running after 15 s"
            print(f"demo: {why}: killing the server and agents", flush=True)
            for proc in running:
                if proc.poll() is None:
                    proc.kill()
            for proc in running:
                proc.wait()


def wait_for_line(proc: subprocess.Popen[str], log: Path, prefix: str, timeout: float) -> str:
    """The rest of the first line of ``log`` that starts with ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        if proc.poll() is not None:
            raise SystemExit(f"demo: the server exited early with code {proc.returncode}")
        time.sleep(0.1)
    raise SystemExit(f"demo: the server did not print {prefix!r} within {timeout}s")


def log_tails(logs: Path, lines: int = 15) -> str:
    """The last lines of every log (printed when the demo fails: the logs go with its dir)."""
    parts = []
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


def create_user(
    children: Children, env: dict[str, str], repo: Path, log: Path, name: str, role: str
) -> str:
    """``flagpost-server user create NAME --role ROLE`` with a random password on stdin."""
    password = secrets.token_urlsafe(12)
    command = [PY, "-m", "server", "user", "create", name, "--role", role]
    children.run(command, log, stdin=password + "\n", env=env, cwd=repo)
    return password


def web_opener(web_url: str, name: str, password: str) -> urllib.request.OpenerDirector:
    """A urllib opener logged in through the login form (its cookie jar holds the session)."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(f"{web_url}/login", timeout=5) as response:
        match = re.search(r'name="csrf_token" value="([^"]+)"', response.read().decode())
    if match is None:
        raise SystemExit("demo: the login page has no CSRF token")
    form = {"name": name, "password": password, "csrf_token": match.group(1), "next": "/"}
    data = urllib.parse.urlencode(form).encode()
    with opener.open(f"{web_url}/login", data=data, timeout=5) as response:
        if urllib.parse.urlsplit(response.url).path == "/login":  # refused: the form again
            raise SystemExit(f"demo: logging in as {name} failed")
    return opener


def outcomes_by_host(opener: urllib.request.OpenerDirector, web_url: str) -> dict[str, set[str]]:
    with opener.open(f"{web_url}/api/v1/events?limit=200", timeout=5) as response:
        events = json.load(response)["events"]
    seen: dict[str, set[str]] = {}
    for event in events:
        seen.setdefault(event["system_info"].get("config_path", ""), set()).add(event["outcome"])
    return seen


def waiting_inputs(opener: urllib.request.OpenerDirector, web_url: str) -> list[str]:
    """The input names the first run waiting for input asks for ([] when none waits)."""
    with opener.open(f"{web_url}/api/v1/runs?state=awaiting_input", timeout=5) as response:
        runs = json.load(response)["runs"]
    if not runs:
        return []
    with opener.open(f"{web_url}/api/v1/runs/{runs[0]['id']}/inputs", timeout=5) as response:
        return sorted(field["name"] for field in json.load(response)["fields"])


def start_agents(
    children: Children,
    roots: dict[str, Path],
    logs: Path,
    grpc_addr: str,
    token: str,
    repo: Path,
    unprivileged: AgentRuntime | None,
) -> None:
    """Enroll each agent, then start its daemon; its output goes to logs/agent-NAME.log."""
    for name, root in roots.items():
        log = logs / f"agent-{name}.log"
        # The healthy agent pauses before each step so its run can be followed live on
        # /runs (and cancelled there); the others run at full speed.
        knobs = {"FLAGPOST_AGENT_STEP_DELAY_SECONDS": "3"} if name == "healthy" else {}
        knobs["FLAGPOST_AGENT_STARTUP_JITTER_SECONDS"] = "2"
        env = {**os.environ, **knobs}
        args = ["--root", str(root)]
        enroll = [*args, "enroll", "--server", grpc_addr, "--token", token]
        if name == "readonly" and unprivileged is not None:
            # As root: the agent runs as nobody, from a copy of the agent it can read.
            env, cwd = unprivileged.env(env), unprivileged.path
            children.run(unprivileged.command(*enroll), log, env=env, cwd=cwd)
            children.start(unprivileged.command(*args, "run"), log, env=env, cwd=cwd)
        else:
            children.run([PY, "-m", "agent", *enroll], log, env=env, cwd=repo)
            children.start([PY, "-m", "agent", *args, "run"], log, env=env, cwd=repo)


def print_summary(
    base: Path,
    env: dict[str, str],
    urls: dict[str, str],
    passwords: dict[str, str],
    *,
    smoke: bool,
) -> None:
    """The block a person needs, printed once everything has started."""
    web_url = urls["web"]
    print()
    print(f"Flagpost demo: a server and {len(EXPECTED)} agents, state in {base}")
    print(f"  logs: {base / 'logs' / 'server.log'}, {base / 'logs' / 'agent-<name>.log'}")
    print(f"Log in at {web_url}/login")
    print(f"  admin:  user demo-admin   password {passwords['admin']}")
    print(f"  viewer: user demo-viewer  password {passwords['viewer']}")
    print(f"History: {web_url}/history")
    print(f"Fleet: {web_url}/   Runs: {web_url}/runs")
    print(f"grpc: {urls['grpc']}")
    print(
        f"Agent {HOSTNAMES['secrets']} waits for input: open its run from {web_url}/runs as "
        f"demo-admin and type database password {DEMO_DB_PASSWORD!r}, upstream token "
        f"{DEMO_UPSTREAM_TOKEN!r} (try a wrong one first)"
    )
    print("Enroll another agent by hand (see README, 'Five-minute tour'):")
    print(f"  FLAGPOST_DATABASE_URL={env['FLAGPOST_DATABASE_URL']} flagpost-server token create")
    if not smoke:
        print("Press Ctrl-C to stop (the demo dir is then removed unless --keep).")
    print(flush=True)


def wait_for_outcomes(web_url: str, viewer_password: str, timeout: float) -> int:
    """Wait until the five outcomes are in the History and print them (0), or time out (1)."""
    opener = web_opener(web_url, "demo-viewer", viewer_password)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = outcomes_by_host(opener, web_url)
        got = {
            name: set().union(*(v for k, v in seen.items() if f"/agents/{name}/" in k))
            for name in EXPECTED
        }
        asked = waiting_inputs(opener, web_url)
        if asked and all(EXPECTED[name] <= got[name] for name in EXPECTED):
            for name in EXPECTED:
                print(f"demo: {name}: {', '.join(sorted(got[name]))}")
            print(f"demo: secrets: run waiting for input: {', '.join(asked)}")
            print("demo: all five outcomes are in the History")
            return 0
        time.sleep(0.5)
    seen = outcomes_by_host(opener, web_url)
    print(f"demo: timed out; outcomes seen: {seen}", file=sys.stderr)
    return 1


def remove(base: Path) -> bool:
    """Remove the demo dir, the read-only one inside included (made writable first: as a
    normal user its 0555 mode would keep its file); whether it is gone."""
    for directory, _, _ in os.walk(base):
        mode = os.stat(directory)
        if mode.st_uid == os.geteuid():
            os.chmod(directory, mode.st_mode | stat.S_IRWXU)
    shutil.rmtree(base, ignore_errors=True)
    return not base.exists()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="exit once all outcomes are stored")
    parser.add_argument("--keep", action="store_true", help="keep the demo dir (state, logs)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--web-port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=50051, help="0 picks a free port")
    args = parser.parse_args()
    SIGNALS.install()

    repo = Path(__file__).resolve().parent.parent
    base = Path(tempfile.mkdtemp(prefix="flagpost-demo-"))
    base.chmod(0o755)  # the unprivileged agent must reach its root
    logs = base / "logs"
    logs.mkdir()
    env = dict(os.environ)
    env.update(
        FLAGPOST_DATABASE_URL=f"sqlite+aiosqlite:///{base / 'flagpost.db'}",
        FLAGPOST_STATE_DIR=str(base / "server-state"),
        FLAGPOST_CHECKIN_INTERVAL_SECONDS="5",
        # The usual ports when they are free, any free port otherwise.
        FLAGPOST_GRPC_PORT=str(args.grpc_port if port_free(args.grpc_port) else 0),
        FLAGPOST_WEB_PORT=str(args.web_port if port_free(args.web_port) else 0),
    )
    children = Children()
    status = 1
    try:
        print(f"demo: starting in {base} (logs in {logs})", flush=True)
        unprivileged = prepare(base / "agent-runtime") if os.geteuid() == 0 else None
        roots = write_agent_roots(base, unprivileged.user if unprivileged else None)
        setup_log = logs / "server.log"
        children.run([PY, "-m", "server", "db", "upgrade"], setup_log, env=env, cwd=repo)
        server = children.start([PY, "-m", "server", "serve"], setup_log, env=env, cwd=repo)
        grpc_addr = wait_for_line(server, setup_log, "grpc: ", 30)
        web_url = wait_for_line(server, setup_log, "web: ", 30).removesuffix("/history")
        passwords = {
            role: create_user(children, env, repo, setup_log, f"demo-{role}", role)
            for role in ("admin", "viewer")
        }
        create = ["token", "create", "--uses", str(len(roots)), "--expires", "1h"]
        token = children.run(
            [PY, "-m", "server", *create], setup_log, capture=True, env=env, cwd=repo
        )
        start_agents(children, roots, logs, grpc_addr, token.strip(), repo, unprivileged)
        urls = {"web": web_url, "grpc": grpc_addr}
        print_summary(base, env, urls, passwords, smoke=args.smoke)
        if args.smoke:
            status = wait_for_outcomes(web_url, passwords["viewer"], args.timeout)
        else:
            while True:
                time.sleep(3600)
    except Stop as stop:
        what = "Ctrl-C" if str(stop) == "SIGINT" else str(stop)
        print(f"\ndemo: {what}: stopping the server and agents (Ctrl-C again to kill them)")
        status = 1 if args.smoke else 0
    except (SystemExit, UnprivilegedError) as exc:
        print(exc, file=sys.stderr)
        status = 1
    finally:
        children.stop()
        SIGNALS.ignore()  # the rest is quick: let it finish
        if status != 0:
            print(log_tails(logs), file=sys.stderr)
        if args.keep:
            print(f"demo: kept {base} (database, agent roots, logs)")
        elif remove(base):
            print(f"demo: removed {base} (run with --keep to keep it)")
        else:
            print(f"demo: could not remove all of {base}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
