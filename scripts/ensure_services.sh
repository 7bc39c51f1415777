#!/usr/bin/env bash
# Make sure what the test suite needs outside Python is here: Debian's chromium (browser tests),
# systemd's tools (systemd-analyze, systemd-sysusers: tests/test_deploy.py checks deploy/'s units;
# nothing is started with them) and a PostgreSQL server on 127.0.0.1:5432 that user postgres
# reaches without a password.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "ensure_services: need root for: $*" >&2; return 1; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v chromium >/dev/null 2>&1; then
  echo "ensure_services: installing Debian's chromium"
  apt_install chromium
fi

if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-sysusers >/dev/null 2>&1; then
  echo "ensure_services: installing systemd (systemd-analyze, systemd-sysusers)"
  apt_install systemd
fi

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "ensure_services: installing PostgreSQL"
  apt_install postgresql
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  # Local test server only: trust connections from the loopback addresses.
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
fi

if ! pg_ready; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "ensure_services: starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
if ! pg_ready; then
  echo "ensure_services: PostgreSQL is not accepting connections on 127.0.0.1:5432" >&2
  exit 1
fi
echo "ensure_services: chromium $(chromium --version 2>/dev/null | awk '{print $2}')," \
  "systemd-analyze $(systemd-analyze --version 2>/dev/null | awk 'NR == 1 {print $2}'), PostgreSQL ready"
