#!/usr/bin/env bash
# Every test, on any machine (`make test` and .ci/run both run this; arguments go to pytest).
#
# Postgres (127.0.0.1:5432) and Redis (:6379) are started where they are installed but down.
# Where they cannot be had, the service tests run on the embedded backend (SQLite and a file
# queue), the few that need the real servers are skipped, and the last line says which tests
# did not run and why. With CI=true or CSSL_TEST_REQUIRE_SERVERS=1 a missing server fails the
# service tests instead. CSSL_TEST_POSTGRES_ADMIN / CSSL_TEST_REDIS point the tests at other
# servers (then nothing is started here).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin

start_postgres() {
  pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && return 0
  command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] || return 0  # not installed
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || return 1
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && return 0; sleep 1; done
  return 1
}

start_redis() {
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
  command -v redis-server >/dev/null || return 0  # not installed
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || return 1
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

if [ -z "${CSSL_TEST_POSTGRES_ADMIN:-}" ]; then start_postgres || echo "PostgreSQL did not start" >&2; fi
if [ -z "${CSSL_TEST_REDIS:-}" ]; then start_redis || echo "Redis did not start" >&2; fi

report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
"$BIN/pytest" -q --junitxml="$report/junit.xml" "$@"
status=$?
[ "$status" -eq 5 ] && status=0  # no test selected (-k, -m) is not a failure
"$BIN/python" scripts/not_run.py "$report/junit.xml"
exit "$status"
