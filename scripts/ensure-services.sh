#!/usr/bin/env bash
# Postgres and Redis must answer on 127.0.0.1 before tests run; start them if this machine can.
set -euo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 5432; then
  echo "[services] Postgres is down; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
if ! up 6379; then
  echo "[services] Redis is down; starting it"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
for i in $(seq 1 50); do up 5432 && up 6379 && exit 0; sleep 0.2; done
up 5432 || echo "[services] Postgres is not reachable on 127.0.0.1:5432" >&2
up 6379 || echo "[services] Redis is not reachable on 127.0.0.1:6379" >&2
exit 1
