#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside the broker on 5672 (left untouched),
# for the cluster tests and for trying leadpipe on a cluster (`make cluster`).
#
#   scripts/rabbit-cluster.sh start          start the three nodes and join them (idempotent)
#   scripts/rabbit-cluster.sh stop           stop them gracefully
#   scripts/rabbit-cluster.sh status         each node's state, and the cluster's members
#   scripts/rabbit-cluster.sh urls           the AMQP_URL list of the three nodes
#   scripts/rabbit-cluster.sh start-node N   start node N (1-3) again; it rejoins the cluster
#   scripts/rabbit-cluster.sh stop-node N    stop node N gracefully
#   scripts/rabbit-cluster.sh kill-node N    SIGKILL node N's Erlang VM
#   scripts/rabbit-cluster.sh reset          stop and delete the nodes' data
#
# Node N is leadpipe-rabbit-N@localhost: AMQP on 5700+N, management on 15700+N, Erlang
# distribution on 25700+N, its data, logs and Erlang cookie under $LEADPIPE_RABBIT_CLUSTER_DIR
# (default /tmp/leadpipe-rabbit-cluster). It runs the installed RabbitMQ (3.10 here; any
# 3.8+ with quorum queues will do) straight from /usr/lib/rabbitmq/bin as the current user:
# no root needed, no system service touched, and epmd (port 4369) shared with the system
# broker.
set -euo pipefail

DIR="${LEADPIPE_RABBIT_CLUSTER_DIR:-/tmp/leadpipe-rabbit-cluster}"
BIN="${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}"
NODES=(1 2 3)

die() { echo "rabbit-cluster: $*" >&2; exit 1; }

[ -x "$BIN/rabbitmq-server" ] || die "no RabbitMQ at $BIN (apt-get install rabbitmq-server, or set RABBITMQ_BIN)"

node_name() { echo "leadpipe-rabbit-$1@localhost"; }
amqp_port() { echo $((5700 + $1)); }

# The environment of node N (and of the CLI tools talking to it).
node_env() {
  local n=$1 base="$DIR/node$1"
  export HOME="$DIR"
  export RABBITMQ_NODENAME; RABBITMQ_NODENAME=$(node_name "$n")
  export RABBITMQ_NODE_PORT; RABBITMQ_NODE_PORT=$(amqp_port "$n")
  export RABBITMQ_DIST_PORT=$((25700 + n))
  export RABBITMQ_BASE="$base"
  export RABBITMQ_MNESIA_BASE="$base/mnesia"
  export RABBITMQ_LOG_BASE="$base/log"
  export RABBITMQ_PID_FILE="$base/pid"
  export RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
  export RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$base/advanced.config"
  export ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() { local n=$1; shift; ( node_env "$n"; "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@" ); }

prepare() {
  local n=$1 base="$DIR/node$1"
  mkdir -p "$base/mnesia" "$base/log"
  if [ ! -f "$DIR/.erlang.cookie" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/.erlang.cookie"
    chmod 400 "$DIR/.erlang.cookie"
  fi
  cat > "$base/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
management.tcp.port = $((15700 + n))
management.tcp.ip = 127.0.0.1
loopback_users.guest = true
log.file.level = warning
EOF
  echo '[rabbitmq_management].' > "$base/enabled_plugins"
  : > "$base/rabbitmq-env.conf"
  # RabbitMQ 3.10's at-least-once dead-letter worker (the delay queues' way back to the work
  # queues) keeps addressing a target's member on a node that is gone, and only sends again
  # at this timeout (default 180 s) once that node is back: 10 s makes it move on promptly.
  echo '[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 10000}]}].' > "$base/advanced.config"
}

running() { ctl "$1" status >/dev/null 2>&1; }

launch_node() {
  local n=$1
  prepare "$n"
  if running "$n"; then return 0; fi
  ( node_env "$n"; "$BIN/rabbitmq-server" -detached )
}

await_node() {
  local n=$1 i
  # The VM registers with epmd a moment after -detached returns; await_startup needs it.
  for i in $(seq 1 60); do
    ctl "$n" await_startup --timeout 10 >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "node $n did not start; see $DIR/node$n/log"
}

start_node() { launch_node "$1"; await_node "$1"; }

join() {
  local n=$1 first; first=$(node_name 1)
  if ctl "$n" cluster_status 2>/dev/null | grep -q "$first"; then return 0; fi
  ctl "$n" stop_app >/dev/null
  ctl "$n" join_cluster "$first" >/dev/null
  ctl "$n" start_app >/dev/null
}

urls() {
  local out=() n
  for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"); done
  (IFS=,; echo "${out[*]}")
}

check_node() { [[ "${1:-}" =~ ^[123]$ ]] || die "name a node: 1, 2 or 3"; }

case "${1:-}" in
  start)
    mkdir -p "$DIR"
    # All at once: a node that stopped before its peers waits for them to boot.
    for n in "${NODES[@]}"; do launch_node "$n"; done
    for n in "${NODES[@]}"; do await_node "$n"; done
    for n in 2 3; do join "$n"; done
    echo "cluster of 3 nodes running:"
    echo "  AMQP_URL=$(urls)"
    echo "  management: http://127.0.0.1:15701 (guest/guest)"
    ;;
  stop)
    for n in "${NODES[@]}"; do running "$n" && ctl "$n" stop >/dev/null || true; done
    echo "cluster stopped"
    ;;
  status)
    for n in "${NODES[@]}"; do
      if running "$n"; then echo "node $n $(node_name "$n") amqp :$(amqp_port "$n") running"
      else echo "node $n $(node_name "$n") amqp :$(amqp_port "$n") stopped"; fi
    done
    for n in "${NODES[@]}"; do
      if running "$n"; then ctl "$n" cluster_status --formatter json 2>/dev/null \
        | python3 -c 'import json,sys; s=json.load(sys.stdin); print("members:", ", ".join(s["disk_nodes"])); print("running:", ", ".join(s["running_nodes"]))'; break; fi
    done
    ;;
  urls) urls ;;
  start-node) check_node "${2:-}"; start_node "$2"; join "$2"; echo "node $2 running" ;;
  stop-node) check_node "${2:-}"; ctl "$2" stop >/dev/null; echo "node $2 stopped" ;;
  kill-node)
    check_node "${2:-}"
    pid=$(cat "$DIR/node$2/pid" 2>/dev/null) || die "node $2 has no pid file"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    echo "node $2 killed (pid $pid)"
    ;;
  reset)
    "$0" stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
    echo "cluster data deleted"
    ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
