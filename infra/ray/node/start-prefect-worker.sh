#!/usr/bin/env bash
# Started on the Ray head by cluster.yaml (head_start_ray_commands): the Prefect
# worker of the `mrkd-process` pool, whose flow runs are the Ray drivers. It
# runs on a Ray node, so the driver joins the local cluster (RAY_ADDRESS=auto)
# instead of going through the Ray client.
set -euo pipefail

set -a
# shellcheck source=/dev/null
. "$HOME/mrkd/mrkd.env"
set +a
export RAY_ADDRESS=auto

pidfile="$HOME/prefect-worker.pid"
# `ray up` on a running cluster reruns the start commands: stop the previous
# worker by its recorded PID. A Prefect worker ignores its first SIGTERM, so
# follow with SIGINT.
if [[ -f "$pidfile" ]]; then
  old="$(cat "$pidfile")"
  if kill -0 "$old" 2>/dev/null; then
    kill -TERM "$old" || true
    sleep 5
    kill -INT "$old" 2>/dev/null || true
    sleep 5
  fi
  rm -f "$pidfile"
fi

nohup prefect worker start --pool mrkd-process --type process \
  >"$HOME/prefect-worker.log" 2>&1 &
echo $! >"$pidfile"
echo "prefect worker started (pid $(cat "$pidfile")), log: $HOME/prefect-worker.log"
