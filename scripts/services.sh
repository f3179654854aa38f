#!/usr/bin/env bash
# Makes sure RabbitMQ and PostgreSQL answer on their default local ports, starting them when
# they are installed but stopped, else with `docker compose` when a Docker engine runs, else
# stopping with what to install. Used by `make run`, `make test` and `.ci/run`.
set -euo pipefail

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for() { # name check seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if $2; then return 0; fi
    sleep 0.1
  done
  echo "services: $1 did not come up within $3 s" >&2
  return 1
}

start_postgres() {
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    local v
    v=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "services: starting PostgreSQL $v"
    pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    wait_for PostgreSQL pg_up 60
    return
  fi
  if command -v pg_ctl >/dev/null 2>&1 && [ -n "${PGDATA:-}" ]; then
    pg_ctl -D "$PGDATA" -l "$PGDATA/server.log" start
    wait_for PostgreSQL pg_up 60
    return
  fi
  return 1
}

start_rabbitmq() {
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached || true
    # `await_startup` needs the node to exist first; retry until it answers.
    local i
    for ((i = 0; i < 120; i++)); do
      if rabbitmqctl await_startup >/dev/null 2>&1; then break; fi
      sleep 0.5
    done
    wait_for RabbitMQ amqp_up 60
    return
  fi
  return 1
}

docker_up() {
  command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 || return 1
  echo "services: starting RabbitMQ and PostgreSQL with docker compose"
  docker compose up -d rabbitmq postgres
  wait_for PostgreSQL pg_up 120
  wait_for RabbitMQ amqp_up 120
}

missing=()
pg_up || start_postgres || missing+=(postgres)
amqp_up || start_rabbitmq || missing+=(rabbitmq)
if [ ${#missing[@]} -gt 0 ]; then
  if docker_up; then exit 0; fi
  cat >&2 <<MSG
services: ${missing[*]} not running and not installed here, and no Docker engine is available.
Install them (Debian/Ubuntu):
    sudo apt-get update && sudo apt-get install -y postgresql rabbitmq-server
or start Docker and run:
    docker compose up -d rabbitmq postgres
PostgreSQL must accept user 'postgres' on 127.0.0.1:5432 without a password (or set
DATABASE_URL), and RabbitMQ must accept guest/guest on 127.0.0.1:5672 (or set AMQP_URL).
MSG
  exit 1
fi
echo "services: PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 are up"
