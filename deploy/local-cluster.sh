#!/usr/bin/env bash
# A multi-node Ray cluster on 127.0.0.1 with token authentication: a head (no CPUs for
# trials, dashboard on loopback only) and N workers with their own CPUs and logical GPUs.
#
#   deploy/local-cluster.sh start [WORKERS] [PORT]   # default 2 workers, GCS port 6390
#   deploy/local-cluster.sh stop
#
# Then: RAY_AUTH_MODE=token fusionsearch run --address 127.0.0.1:6390 --storage /shared/runs
# Every node, client and `ray job submit` needs RAY_AUTH_MODE=token (the token is in
# ~/.ray/auth_token, or RAY_AUTH_TOKEN). Worker resources come from WORKER_CPUS/WORKER_GPUS;
# DASHBOARD_PORT and AGENT_PORT (the head's job agent) move the head's HTTP ports.
set -euo pipefail
export RAY_AUTH_MODE=token
command=${1:-}
workers=${2:-2}
port=${3:-6390}
dashboard_port=${DASHBOARD_PORT:-8265}
# The head's dashboard agent serves job submission; another Ray on the machine may hold its default port.
agent_port=${AGENT_PORT:-52365}

case "$command" in
  start)
    if [ ! -s "$HOME/.ray/auth_token" ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
      mkdir -p "$HOME/.ray"
      umask 077
      python3 -c 'import secrets; print(secrets.token_hex(32))' > "$HOME/.ray/auth_token"
    fi
    ray start --head --node-ip-address 127.0.0.1 --port "$port" --num-cpus 0 --num-gpus 0 \
      --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
      --dashboard-agent-listen-port "$agent_port" --disable-usage-stats
    # One after another: parallel starts race for ports.
    for _ in $(seq "$workers"); do
      ray start --address "127.0.0.1:$port" --node-ip-address 127.0.0.1 \
        --num-cpus "${WORKER_CPUS:-1}" --num-gpus "${WORKER_GPUS:-1}" --disable-usage-stats
    done
    echo "cluster up: --address 127.0.0.1:$port, jobs at http://127.0.0.1:$dashboard_port"
    ;;
  stop)
    ray stop --force
    ;;
  *)
    echo "usage: $0 start [WORKERS] [PORT] | stop" >&2
    exit 2
    ;;
esac
