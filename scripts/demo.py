"""The `make run` demo: a Flagpost server on SQLite in a temp dir and five local agents.

    healthy   a legacy v1 config that migrates to v4       (detection + execution success)
    invalid   a legacy config with a syntax error on line 3 (detection failed)
    readonly  a legacy config in a read-only directory    (execution failed, rolled back)
    current   a config already at v4                      (detection not needed)
    secrets   a legacy config whose database password and upstream token the old version
              never held (only verifiers): its run waits for input (AWAITING_INPUT) until an
              admin types them on the run page (the demo prints them)

The read-only failure is a real OS error: as root (which ignores permission bits) that agent
runs as the unprivileged user ``nobody`` through setpriv; as a normal user the directory's mode
is enough.

The web needs a login: the demo creates an admin (``demo-admin``) and a viewer
(``demo-viewer``) with random passwords (``flagpost-server user create``, the password piped on
stdin) and prints both logins.

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
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from agent.migrations.chain import legacy_config_with_secrets

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


def agent_command(root: Path, *args: str, user: pwd.struct_passwd | None = None) -> list[str]:
    command = [PY, "-m", "agent", "--root", str(root), *args]
    if user is not None:
        command = [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            *command,
        ]
    return command


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise SystemExit(f"server exited early with code {proc.returncode}")
            continue
        sys.stdout.write(f"  [server] {line}")
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise SystemExit(f"server did not print {prefix!r} within {timeout}s")


def create_user(env: dict[str, str], repo: Path, name: str, role: str) -> str:
    """``flagpost-server user create NAME --role ROLE`` with a random password on stdin."""
    password = secrets.token_urlsafe(12)
    subprocess.run(
        [PY, "-m", "server", "user", "create", name, "--role", role],
        env=env,
        cwd=repo,
        check=True,
        input=password + "\n",
        capture_output=True,
        text=True,
    )
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="exit once all outcomes are stored")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--web-port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=50051, help="0 picks a free port")
    args = parser.parse_args()

    repo = Path(__file__).resolve().parent.parent
    base = Path(tempfile.mkdtemp(prefix="flagpost-demo-"))
    base.chmod(0o755)  # the unprivileged agent must reach its root
    unprivileged = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    roots = write_agent_roots(base, unprivileged)

    env = dict(os.environ)
    env.update(
        FLAGPOST_DATABASE_URL=f"sqlite+aiosqlite:///{base / 'flagpost.db'}",
        FLAGPOST_STATE_DIR=str(base / "server-state"),
        FLAGPOST_CHECKIN_INTERVAL_SECONDS="5",
        # The usual ports when they are free, any free port otherwise.
        FLAGPOST_GRPC_PORT=str(args.grpc_port if port_free(args.grpc_port) else 0),
        FLAGPOST_WEB_PORT=str(args.web_port if port_free(args.web_port) else 0),
    )
    children: list[subprocess.Popen[str]] = []

    def stop_all(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()

    try:
        print(f"demo: state in {base}")
        subprocess.run([PY, "-m", "server", "db", "upgrade"], env=env, cwd=repo, check=True)
        server = subprocess.Popen(
            [PY, "-m", "server", "serve"],
            env=env,
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        children.append(server)
        grpc_addr = wait_for_line(server, "grpc: ", 30)
        web_url = wait_for_line(server, "web: ", 30).removesuffix("/history")
        admin_password = create_user(env, repo, "demo-admin", "admin")
        viewer_password = create_user(env, repo, "demo-viewer", "viewer")
        token = subprocess.run(
            [PY, "-m", "server", "token", "create", "--uses", str(len(roots)), "--expires", "1h"],
            env=env,
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for name, root in roots.items():
            user = unprivileged if name == "readonly" else None
            enroll = ["enroll", "--server", grpc_addr, "--token", token]
            subprocess.run(agent_command(root, *enroll, user=user), cwd=repo, check=True)
            # The healthy agent pauses before each step so its run can be followed live on
            # /runs (and cancelled there); the others run at full speed.
            knobs = {"FLAGPOST_AGENT_STEP_DELAY_SECONDS": "3"} if name == "healthy" else {}
            knobs["FLAGPOST_AGENT_STARTUP_JITTER_SECONDS"] = "2"
            command = agent_command(root, "run", user=user)
            children.append(
                subprocess.Popen(command, cwd=repo, env={**os.environ, **knobs}, text=True)
            )

        print()
        print(f"Log in at {web_url}/login")
        print(f"  admin:  user demo-admin   password {admin_password}")
        print(f"  viewer: user demo-viewer  password {viewer_password}")
        print(f"History: {web_url}/history")
        print(f"Fleet: {web_url}/   Runs: {web_url}/runs")
        print(f"grpc: {grpc_addr}")
        print(
            f"Agent {HOSTNAMES['secrets']} waits for input: open its run from {web_url}/runs as "
            f"demo-admin and type database password {DEMO_DB_PASSWORD!r}, upstream token "
            f"{DEMO_UPSTREAM_TOKEN!r} (try a wrong one first)"
        )
        print("Enroll another agent by hand (see README, 'Five-minute tour'):")
        print(
            f"  FLAGPOST_DATABASE_URL={env['FLAGPOST_DATABASE_URL']} flagpost-server token create"
        )
        print()

        if args.smoke:
            opener = web_opener(web_url, "demo-viewer", viewer_password)
            deadline = time.monotonic() + args.timeout
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

        print("Press Ctrl-C to stop.")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        while not stop.wait(1):
            pass
        return 0
    finally:
        stop_all()
        if args.smoke:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
