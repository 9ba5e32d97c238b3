#!/usr/bin/env bash
# tests/reliability/valgrind.sh — the extension's pg_regress suite on a PostgreSQL server running under valgrind.
#
#   tests/reliability/valgrind.sh              every sql/*.sql file
#   tests/reliability/valgrind.sh up markers   only these regress files
#
# A throwaway cluster of our own (initdb into a temp dir, unix socket only, removed at the end even on failure) is
# started as `valgrind --trace-children=yes --track-origins=yes postgres ...`, so every backend that runs pg_deploy's
# C++ is checked (memcheck). `make installcheck` then runs against it. Debian's postgres is not built with
# USE_VALGRIND, so memcheck cannot see palloc chunk boundaries and postgres itself produces a few known reports
# (uninitialised padding sent to the stats collector or written to WAL); this script therefore counts the reports
# whose stack passes through pg_deploy.so, and fails when there is any (or when a backend crashed). The full log
# stays in $VALGRIND_LOG_DIR (default: a temp dir, printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
tests=("$@")
if [ ${#tests[@]} = 0 ]; then
  for f in sql/*.sql; do tests+=("$(basename "$f" .sql)"); done
fi

work=$(mktemp -d /tmp/pgdeploy-valgrind-XXXXXX)
logdir=${VALGRIND_LOG_DIR:-$work/logs}
mkdir -p "$logdir" "$work/sock"
as_owner=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres:postgres "$work"
  chmod 755 "$work"
  as_owner=(runuser -u postgres --)
  [ "${logdir#$work}" != "$logdir" ] || chown postgres:postgres "$logdir"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
user=$([ "$(id -u)" = 0 ] && echo postgres || id -un)
pid=

# stop_server: pg_ctl as the cluster's owner ($pid is runuser's when we are root, and runuser does not pass
# signals on).
stop_server() {
  "${as_owner[@]}" "$PG_BIN/pg_ctl" -D "$work/data" -m "${1:-fast}" -w -t 300 stop >/dev/null 2>&1 || true
}

cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    stop_server immediate
  fi
  [ -n "${VALGRIND_LOG_DIR:-}" ] || cp -r "$logdir" "/tmp/pgdeploy-valgrind-logs.$$" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"${as_owner[@]}" "$PG_BIN/initdb" -D "$work/data" -U "$user" --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
"${as_owner[@]}" valgrind --quiet --trace-children=yes --track-origins=yes --num-callers=40 \
    --error-limit=no --leak-check=no --read-var-info=no --log-file="$logdir/vg.%p.log" \
    "$PG_BIN/postgres" -D "$work/data" -p "$port" -c listen_addresses= -c unix_socket_directories="$work/sock" \
    -c max_connections=20 -c fsync=off -c autovacuum=off -c jit=off -c shared_buffers=16MB \
    >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 180); do
  "$PG_BIN/pg_isready" -q -h "$work/sock" -p "$port" && break
  sleep 1
done
"$PG_BIN/pg_isready" -h "$work/sock" -p "$port"

echo "== pg_regress under valgrind: ${tests[*]}"
rc=0
PGHOST=$work/sock PGPORT=$port PGUSER=$user make -s -C "$ROOT" installcheck ISOLATION= REGRESS="${tests[*]}" \
  REGRESS_OPTS="--inputdir=. --outputdir=$logdir/results --host=$work/sock --port=$port --user=$user" || rc=$?

stop_server fast
wait "$pid" 2>/dev/null || true
pid=

# Memcheck reports ("==PID== Invalid read ...", "Conditional jump ...", "Syscall param ...") by process log, and
# the subset of logs in which a report's stack passes through pg_deploy.so.
report_re='^==[0-9]*== \(Invalid\|Conditional\|Use of uninit\|Syscall param\|Mismatched\|Source and destination\)'
nlogs=$(ls "$logdir"/vg.*.log 2>/dev/null | wc -l)
all=$(cat "$logdir"/vg.*.log 2>/dev/null | grep -c "$report_re" || true)
ours_logs=$(grep -l "pg_deploy.so" "$logdir"/vg.*.log 2>/dev/null || true)
ours=0
for f in $ours_logs; do ours=$((ours + $(grep -c "$report_re" "$f" || true))); done
crashed=$(grep -c "terminated by signal" "$work/server.log" || true)
echo "valgrind: $nlogs processes checked, $all memcheck reports in all (postgres itself), $ours through" \
     "pg_deploy.so; backends terminated by a signal: $crashed; pg_regress exit: $rc"
for f in $ours_logs; do
  echo "----- $f"; grep -B2 -A30 "pg_deploy.so" "$f" | head -80
done
[ "$crashed" = 0 ] || { echo "a backend crashed"; exit 1; }
[ "$rc" = 0 ] || { echo "pg_regress failed under valgrind (diffs: $logdir/results)"; exit 1; }
[ -z "$ours_logs" ] || { echo "memcheck reports in pg_deploy.so"; exit 1; }
echo "valgrind: clean (no memcheck report passes through pg_deploy.so)"
