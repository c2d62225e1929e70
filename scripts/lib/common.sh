# scripts/lib/common.sh: helpers sourced by the scripts. They install what is
# missing on a Debian/Ubuntu machine (apt-get, as root or through sudo), and
# start the machine's Redis and RabbitMQ on loopback when nothing answers (and
# reuse them when something does): the shared services the tests run on.
# Stacks are started by warren-dev (testkit), never here.
# Knobs: WARREN_REDIS_PORT (6379), WARREN_AMQP_PORT (5672).
# shellcheck shell=bash

WARREN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WARREN_REDIS_PORT="${WARREN_REDIS_PORT:-6379}"
WARREN_AMQP_PORT="${WARREN_AMQP_PORT:-5672}"
_WARREN_APT_UPDATED=""

# haproxy, rabbitmq-server and friends live in sbin.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac

log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

_as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

# need_apt PKG...: install the Debian packages that are not installed yet.
need_apt() {
  local pkg missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "no apt-get here: install ${missing[*]} yourself"
  log "installing ${missing[*]} (apt-get)"
  if [[ -z $_WARREN_APT_UPDATED ]]; then
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _WARREN_APT_UPDATED=1
  fi
  _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# port_open PORT: true when something accepts TCP on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_redis_ok() { redis-cli -h 127.0.0.1 -p "$WARREN_REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

# ensure_redis: reuse the Redis on WARREN_REDIS_PORT, else install and start one.
ensure_redis() {
  command -v redis-cli >/dev/null && _redis_ok && { log "reusing Redis on :$WARREN_REDIS_PORT"; return 0; }
  need_apt redis-server
  _redis_ok && return 0
  port_open "$WARREN_REDIS_PORT" && die "port $WARREN_REDIS_PORT is taken by something that is not Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$WARREN_REDIS_PORT" \
    --save '' --appendonly no >/dev/null
  local deadline=$((SECONDS + 10))
  until _redis_ok; do
    ((SECONDS < deadline)) || die "Redis did not answer on :$WARREN_REDIS_PORT"
    sleep 0.1
  done
  log "started Redis on :$WARREN_REDIS_PORT"
}

# _amqp_ok: true when 127.0.0.1:WARREN_AMQP_PORT answers an AMQP 0-9-1 header
# with a method frame (Connection.Start), i.e. the broker is up, not just bound.
_amqp_ok() {
  python3 - "$WARREN_AMQP_PORT" 2>/dev/null <<'EOF'
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(1) == b"\x01" else 1)
EOF
}

# ensure_rabbitmq: reuse the broker on WARREN_AMQP_PORT, else install and start
# one (detached) and wait up to 60 s for it to accept AMQP.
ensure_rabbitmq() {
  _amqp_ok && { log "reusing RabbitMQ on :$WARREN_AMQP_PORT"; return 0; }
  need_apt rabbitmq-server
  _amqp_ok && return 0 # some installs start the service themselves
  port_open "$WARREN_AMQP_PORT" && die "port $WARREN_AMQP_PORT is open but does not speak AMQP"
  log "starting RabbitMQ (takes a few seconds)"
  # Loopback only: AMQP listener, epmd and Erlang distribution. (A listener
  # set in /etc/rabbitmq/rabbitmq.conf takes precedence over these.)
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$WARREN_AMQP_PORT" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    rabbitmq-server -detached >/dev/null 2>&1 || die "rabbitmq-server -detached failed"
  local deadline=$((SECONDS + 60))
  until _amqp_ok; do
    ((SECONDS < deadline)) || die "RabbitMQ did not accept AMQP on :$WARREN_AMQP_PORT within 60s"
    sleep 0.5
  done
  # Boot finished too (plugins, feature flags), not just the listener.
  rabbitmqctl await_startup --timeout 30 >/dev/null 2>&1 || true
  log "started RabbitMQ on :$WARREN_AMQP_PORT"
}

# fresh_vhost NAME: the local broker's vhost NAME, emptied: deleted with
# every stream an earlier run left in it, made again, guest allowed. Fails
# (status 1) where rabbitmqctl cannot reach the broker.
fresh_vhost() {
  local vhost=$1
  command -v rabbitmqctl >/dev/null || return 1
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
  rabbitmqctl -q add_vhost "$vhost" >/dev/null 2>&1 || return 1
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null 2>&1
}

ensure_haproxy() { command -v haproxy >/dev/null || need_apt haproxy; }
ensure_chromium() { command -v chromium >/dev/null || need_apt chromium; }

# ensure_node_deps: `npm ci` in gateway/tests/js when node_modules is missing
# or older than package-lock.json.
ensure_node_deps() {
  local dir="$WARREN_ROOT/gateway/tests/js"
  [[ -d $dir/node_modules && ! $dir/package-lock.json -nt $dir/node_modules ]] && return 0
  log "installing npm packages in gateway/tests/js"
  if [[ -f $dir/package-lock.json ]]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  else
    log "warning: no package-lock.json; falling back to npm install"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
  fi
  touch "$dir/node_modules"
}
