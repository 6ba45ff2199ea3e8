#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 (a free port, a temporary data directory) and
# export MODELYARD_TEST_POSTGRES_URL for the registry tests. Source it:
#
#     source .ci/postgres.sh          # installs postgresql with apt-get if its binaries are missing
#     make test                       # the PostgreSQL tests now run instead of skipping
#     modelyard_postgres_stop         # (optional) stop it; it also stops when the shell exits
#
# Runs the server as the `postgres` user when invoked as root (initdb refuses root). The caller's
# shell options are restored at the end (safe to source from a `set -euo pipefail` script).
_modelyard_pg_opts=$(set +o)
_modelyard_pg_flags=$-  # $(set +o) runs in a subshell, which never has errexit on
set -euo pipefail

_pg_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  if [ -n "$found" ] && [ -x "$found/$name" ]; then echo "$found/$name"; return; fi
  return 1
}

if ! _pg_bin initdb >/dev/null || ! _pg_bin pg_ctl >/dev/null; then
  echo "postgres.sh: installing postgresql (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
fi
PG_INITDB=$(_pg_bin initdb)
PG_CTL=$(_pg_bin pg_ctl)

PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PG_DIR=$(mktemp -d /tmp/modelyard-pg.XXXXXX)
RUN_AS=()
PG_USER=$(id -un)
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$PG_DIR"
  RUN_AS=(runuser -u postgres --)
  PG_USER=postgres
fi

"${RUN_AS[@]}" "$PG_INITDB" -D "$PG_DIR/data" -U "$PG_USER" --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
  || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
# Loopback only, socket in the temp dir (no /var/run needed), fsync off: throw-away test data.
"${RUN_AS[@]}" "$PG_CTL" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start \
  -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=200" >&2 \
  || { cat "$PG_DIR/server.log" >&2; exit 1; }

export MODELYARD_TEST_POSTGRES_URL="postgresql://${PG_USER}@127.0.0.1:${PG_PORT}/postgres"
export MODELYARD_PG_DIR="$PG_DIR"
modelyard_postgres_stop() {
  "${RUN_AS[@]}" "$PG_CTL" -D "$MODELYARD_PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$MODELYARD_PG_DIR"
}
trap modelyard_postgres_stop EXIT
echo "postgres.sh: PostgreSQL on 127.0.0.1:${PG_PORT}; MODELYARD_TEST_POSTGRES_URL=${MODELYARD_TEST_POSTGRES_URL}" >&2
eval "$_modelyard_pg_opts"
case $_modelyard_pg_flags in *e*) set -e ;; *) set +e ;; esac
