#!/bin/bash
# The demo client of deploy/docker-compose.yaml: connects through pgmoat as
# each tenant, prints what it sees, and exits non-zero if tenant isolation
# does not hold. Needs psql and bash (the postgres image has both).
#
# Environment: PGMOAT_HOST (default pgmoat), PGMOAT_PORT (6432),
# PGMOAT_METRICS (pgmoat:9930), PGDATABASE (app).
set -euo pipefail

HOST=${PGMOAT_HOST:-pgmoat}
PORT=${PGMOAT_PORT:-6432}
METRICS=${PGMOAT_METRICS:-$HOST:9930}
DB=${PGDATABASE:-app}
failed=0

# as USER PASSWORD psql-args...: psql through pgmoat as a tenant's login.
# VERBOSITY verbose prints the SQLSTATE of every error.
as() {
  local user=$1 password=$2
  shift 2
  PGPASSWORD=$password psql -X -q -v VERBOSITY=verbose \
    "host=$HOST port=$PORT user=$user dbname=$DB sslmode=disable connect_timeout=5" "$@"
}
acme() { as acme_app acme_secret "$@"; }
globex() { as globex_app globex_secret "$@"; }

# expect NAME WANT GOT: report one check.
expect() {
  if [[ $3 == "$2" ]]; then
    echo "ok   $1: $3"
  else
    echo "FAIL $1: got '$3', want '$2'"
    failed=1
  fi
}

# blocked NAME USER-FUNC SQL: the statement must fail with SQLSTATE 42501.
blocked() {
  local out
  out=$("$2" -c "$3" 2>&1 || true)
  echo "     $3"
  echo "$out" | sed 's/^/       /'
  if grep -q '42501' <<<"$out"; then
    echo "ok   $1: refused with SQLSTATE 42501"
  else
    echo "FAIL $1: not refused with 42501"
    failed=1
  fi
}

echo "waiting for pgmoat at $HOST:$PORT ..."
for i in $(seq 1 60); do
  if acme -Atc 'select 1' >/dev/null 2>&1; then break; fi
  if ((i == 60)); then
    acme -Atc 'select 1' # show why
    exit 1
  fi
  sleep 1
done

echo
echo "== reads are confined to the tenant's rows (RLS, tenant set by pgmoat)"
expect "acme sees only acme orders" acme "$(acme -Atc "select string_agg(distinct tenant_id, ',') from orders")"
expect "globex sees only globex orders" globex "$(globex -Atc "select string_agg(distinct tenant_id, ',') from orders")"
expect "acme counts its 4 orders" 4 "$(acme -Atc 'select count(*) from orders')"
expect "globex counts its 3 orders" 3 "$(globex -Atc 'select count(*) from orders')"
expect "shared table plans is readable" 3 "$(acme -Atc 'select count(*) from plans')"

echo
echo "== writes cannot cross tenants (RLS WITH CHECK, SQLSTATE 42501 from PostgreSQL)"
blocked "acme cannot insert a globex order" acme \
  "insert into orders (tenant_id, customer_id, amount) values ('globex', 4, 1)"
expect "acme updates no globex order" 0 \
  "$(acme -Atc "with u as (update orders set status = 'hacked' where tenant_id = 'globex' returning 1) select count(*) from u")"
expect "globex's orders are untouched" 0 "$(globex -Atc "select count(*) from orders where status = 'hacked'")"

echo
echo "== pgmoat refuses what RLS cannot protect (SQLSTATE 42501 from pgmoat)"
blocked "audit_raw has no RLS" acme "select * from audit_raw"
blocked "the tenant setting is pgmoat's" acme "set app.current_tenant_id = 'globex'"
blocked "set_config is refused" acme "select set_config('app.current_tenant_id', 'globex', false)"
blocked "shared tables are read-only" acme "delete from plans"
blocked "DO blocks hide SQL" acme "do \$\$ begin perform 1; end \$\$"

echo
echo "== pgmoat_blocked_statements_total (from http://$METRICS/metrics)"
exec 3<>"/dev/tcp/${METRICS%:*}/${METRICS##*:}"
printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$METRICS" >&3
grep '^pgmoat_blocked_statements_total' <&3 || { echo "FAIL no blocked statements counted"; failed=1; }
exec 3<&-

echo
if ((failed)); then
  echo "client: tenant isolation checks FAILED"
  exit 1
fi
echo "client: all tenant isolation checks passed"
