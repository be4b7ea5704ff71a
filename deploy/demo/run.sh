#!/usr/bin/env bash
# Runs the pgmoat demo (`make run`): a throwaway PostgreSQL loaded with
# deploy/demo/schema.sql, and pgmoat in front of it on 127.0.0.1:6432 with two
# tenants, acme and globex. Ctrl-C stops both and removes every file.
#
#   deploy/demo/run.sh            build bin/pgmoat, start PostgreSQL and pgmoat
#   deploy/demo/run.sh --db-only  start only PostgreSQL (e.g. to run pgmoat yourself)
#
# Works as root (the server then runs as the postgres OS user; PostgreSQL
# refuses root) and as an ordinary user. PGBIN selects the PostgreSQL binaries.
set -euo pipefail

DB_ONLY=0
case "${1:-}" in
  "") ;;
  --db-only) DB_ONLY=1 ;;
  *) echo "usage: $0 [--db-only]" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
LISTEN_PORT=6432 # as in deploy/demo/pgmoat.yaml
METRICS_PORT=9930

die() { echo "run.sh: $*" >&2; exit 1; }

# port_in_use PORT: true if something accepts connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# PostgreSQL binaries: $PGBIN, else the newest /usr/lib/postgresql/*/bin, else PATH.
if [[ -z "${PGBIN:-}" ]]; then
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r || true); do
    if [[ -x "$d/initdb" ]]; then PGBIN=$d; break; fi
  done
fi
if [[ -z "${PGBIN:-}" ]] && command -v initdb >/dev/null; then
  PGBIN=$(dirname "$(command -v initdb)")
fi
[[ -n "${PGBIN:-}" && -x "$PGBIN/initdb" ]] ||
  die "no PostgreSQL binaries found; set PGBIN or run .ci/run (installs postgresql-15)"
PSQL="$PGBIN/psql"
[[ -x "$PSQL" ]] || PSQL=$(command -v psql) || die "psql not found; install postgresql-client"

# as_pg CMD...: run a server binary as the postgres OS user when we are root.
if [[ $(id -u) -eq 0 ]]; then
  PATH=$PATH:/usr/sbin:/sbin # runuser
  id -u postgres >/dev/null 2>&1 ||
    die "running as root needs the postgres OS user: useradd --system --no-create-home postgres"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

if [[ $DB_ONLY -eq 0 ]]; then
  for p in $LISTEN_PORT $METRICS_PORT; do
    ! port_in_use "$p" || die "port $p on 127.0.0.1 is taken; stop what listens there (pgmoat uses 6432 and 9930)"
  done
  if [[ -d /usr/local/go/bin ]]; then PATH=$PATH:/usr/local/go/bin; fi
  echo "building bin/pgmoat ..."
  go build -o bin/pgmoat ./cmd/pgmoat
fi

PGPORT=54320
while port_in_use "$PGPORT"; do PGPORT=$((PGPORT + 1)); done

# Everything lives in DIR (world-traversable); the data directory, the log
# and the unix socket in DIR/pg, which only the server's user can enter.
DIR=$(mktemp -d -t pgmoat-demo.XXXXXX)
PGDIR=$DIR/pg
CHILD_PID= # pgmoat (or sleep with --db-only), running in the background
cleanup() {
  trap - EXIT INT TERM
  if [[ -n "$CHILD_PID" ]] && kill -0 "$CHILD_PID" 2>/dev/null; then
    kill -TERM "$CHILD_PID" 2>/dev/null || true
    wait "$CHILD_PID" 2>/dev/null || true
  fi
  if [[ -f "$PGDIR/data/postmaster.pid" ]]; then
    (cd / && as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1) || true
  fi
  rm -rf "$DIR"
  echo "run.sh: stopped; removed $DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

chmod 755 "$DIR"
mkdir -m 700 "$PGDIR"
if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$PGDIR"; fi

echo "starting PostgreSQL ($PGBIN) on 127.0.0.1:$PGPORT in $DIR ..."
# Local (unix socket) connections are trusted, so the schema loads as the
# superuser; TCP connections need a password, so pgmoat's upstream login is
# really checked and the superuser cannot log in over TCP.
(cd / && as_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth-local=trust \
  --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$DIR/initdb.log" 2>&1) ||
  { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
(cd / && as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 30 \
  -o "-c listen_addresses=127.0.0.1 -c port=$PGPORT -c unix_socket_directories=$PGDIR -c fsync=off" \
  start >/dev/null) ||
  { tail -n 30 "$PGDIR/server.log" >&2 || true; die "PostgreSQL did not start"; }

psql_super() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$PGDIR" -p "$PGPORT" -U postgres "$@"; }
psql_super -d postgres -c "CREATE DATABASE app"
psql_super -d app -f deploy/demo/schema.sql >/dev/null
echo "loaded deploy/demo/schema.sql into database app"

DIRECT="host=127.0.0.1 port=$PGPORT user=pgmoat dbname=app sslmode=disable"
if [[ $DB_ONLY -eq 1 ]]; then
  cat <<EOF

PostgreSQL is ready. pgmoat's upstream DSN:
  $DIRECT password=pgmoat_secret
Direct, without a tenant, RLS shows no orders:
  PGPASSWORD=pgmoat_secret psql "$DIRECT" -Atc "select count(*) from orders"
Ctrl-C stops PostgreSQL and removes $DIR.
EOF
  sleep infinity &
  CHILD_PID=$!
  wait "$CHILD_PID" || true
  exit 0
fi

sed "s/@PGPORT@/$PGPORT/" deploy/demo/pgmoat.yaml >"$DIR/pgmoat.yaml"

cat <<EOF

pgmoat demo (config: $DIR/pgmoat.yaml)
  tenant acme:   postgres://acme_app:acme_secret@127.0.0.1:$LISTEN_PORT/app?sslmode=disable
  tenant globex: postgres://globex_app:globex_secret@127.0.0.1:$LISTEN_PORT/app?sslmode=disable

Try, in another terminal:
  # only acme's rows
  PGPASSWORD=acme_secret psql "host=127.0.0.1 port=$LISTEN_PORT user=acme_app dbname=app" -Atc "select distinct tenant_id from orders"
  # audit_raw has no RLS: blocked with SQLSTATE 42501
  PGPASSWORD=acme_secret psql "host=127.0.0.1 port=$LISTEN_PORT user=acme_app dbname=app" -c "select * from audit_raw"
  # changing the tenant is blocked too
  PGPASSWORD=acme_secret psql "host=127.0.0.1 port=$LISTEN_PORT user=acme_app dbname=app" -c "set app.current_tenant_id = 'globex'"
  # blocked statements, by tenant, reason and relation
  curl -s 127.0.0.1:$METRICS_PORT/metrics | grep pgmoat_blocked
  # PostgreSQL directly, as pgmoat's role with no tenant set: RLS shows no orders
  PGPASSWORD=pgmoat_secret psql "$DIRECT" -Atc "select count(*) from orders"
  # audit the database for what breaks isolation (exit status 0: nothing)
  bin/pgmoat check --config $DIR/pgmoat.yaml

Ctrl-C stops pgmoat and PostgreSQL and removes $DIR.

EOF

bin/pgmoat run --config "$DIR/pgmoat.yaml" &
CHILD_PID=$!
status=0
wait "$CHILD_PID" || status=$?
CHILD_PID=
echo "run.sh: pgmoat exited with status $status" >&2
exit "$status"
