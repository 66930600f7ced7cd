#!/bin/sh
# hushgate's container entry point (runs under tini, as uid 10001).
#   up | serve | proxy | simulator | init | doctor | <any hushgate command>
#   healthcheck   GET the /healthz of whatever this container runs (the image's HEALTHCHECK)
set -eu
umask 077   # every file and folder hushgate creates is private (0600 / 0700)

HEALTH_FILE=/tmp/hushgate-health-url
cmd=${1:-up}

health() {  # remember which /healthz the HEALTHCHECK should ask
  printf '%s\n' "$1" > "$HEALTH_FILE"
}

# wait_for_database reachable|migrated: up to HUSHGATE_WAIT_SECONDS (default 180) for a
# database that starts beside this container (compose starts them together).
wait_for_database() {
  python3 - "$1" "${HUSHGATE_WAIT_SECONDS:-180}" <<'PY'
import sys, time
from control.core import schema
from control.core.config import load_config
from control.core.db import Database

want, seconds = sys.argv[1], float(sys.argv[2])
db = Database.from_config(load_config())
deadline, state = time.monotonic() + seconds, "unreachable"
while time.monotonic() < deadline:
    try:
        if want == "reachable" or schema.is_current(db):
            schema.current_revision(db)
            sys.exit(0)
        state = "not migrated yet"
    except Exception as exc:  # reported by class only: a URL may carry a password
        state = f"unreachable ({type(exc).__name__})"
    time.sleep(2)
sys.exit(f"hushgate: the database is {state} after {seconds:.0f} s")
PY
}

case "$cmd" in
  healthcheck)
    url=$(cat "$HEALTH_FILE" 2>/dev/null || true)
    [ -n "$url" ] || { echo "nothing to check yet" >&2; exit 1; }
    exec python3 -c 'import socket, sys, urllib.request
url = sys.argv[1]
if url.startswith("tcp://"):  # the simulator has no /healthz: its port answering is enough
    host, _, port = url[6:].rpartition(":")
    socket.create_connection((host, int(port)), timeout=4).close()
    sys.exit(0)
with urllib.request.urlopen(url, timeout=4) as r:
    sys.exit(0 if r.status == 200 else 1)' "$url"
    ;;
  serve | up)
    # Create or migrate the schema and the first admin (idempotent). The first admin's
    # password comes from $HUSHGATE_ADMIN_PASSWORD; `up` generates one into the data folder.
    if [ "$cmd" = serve ]; then
      wait_for_database reachable
      hushgate init
    fi
    health "http://127.0.0.1:${HUSHGATE_CONTROL_PORT:-8090}/healthz"
    ;;
  proxy)
    wait_for_database migrated   # by the control plane's `hushgate init`
    health "http://127.0.0.1:${HUSHGATE_PROXY_PORT:-8080}/healthz"
    ;;
  simulator)
    health "tcp://127.0.0.1:${HUSHGATE_SIMULATOR_PORT:-9999}"
    ;;
esac
exec hushgate "$@"
