#!/bin/bash
# pgmoat-healthcheck: exits 0 if pgmoat's HTTP endpoint answers 200, else 1.
# The runtime image has no curl or wget, so this speaks just enough HTTP/1.0
# over bash's /dev/tcp; it depends on nothing but bash.
#
#   pgmoat-healthcheck            GET /healthz (liveness)
#   pgmoat-healthcheck /readyz    GET /readyz  (catalog loaded, upstream reachable)
#
# The address is PGMOAT_HEALTHCHECK_ADDR, else PGMOAT_METRICS_LISTEN, else
# 127.0.0.1:9930 (pgmoat's default metrics_listen). A wildcard host (":9930",
# "0.0.0.0:9930", "[::]:9930") is checked on 127.0.0.1. If metrics_listen is
# set in the config file to something else than 127.0.0.1 or a wildcard, set
# PGMOAT_HEALTHCHECK_ADDR to match.
set -u

addr=${PGMOAT_HEALTHCHECK_ADDR:-${PGMOAT_METRICS_LISTEN:-127.0.0.1:9930}}
path=${1:-/healthz}
host=${addr%:*}
port=${addr##*:}
case $host in
  "" | 0.0.0.0 | "[::]") host=127.0.0.1 ;;
  \[*\]) host=${host:1:-1} ;; # [::1] -> ::1
esac

exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$addr" >&3
# The status line: HTTP/1.0 200 OK
read -r -t 5 _ code _ <&3 || exit 1
[[ $code == 200 ]]
