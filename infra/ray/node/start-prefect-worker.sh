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
# worker by its recorded PID, with one SIGTERM (python -m flows.worker stops on
# it gracefully; a plain `prefect worker start` started from this script, a
# background job without job control, ignored it: flows/worker.py). Wait for it
# to be gone, at most 60 s, before starting the next one.
if [[ -f "$pidfile" ]]; then
  old="$(cat "$pidfile")"
  if kill -0 "$old" 2>/dev/null; then
    kill -TERM "$old" || true
    for _ in $(seq 60); do
      kill -0 "$old" 2>/dev/null || break
      sleep 1
    done
  fi
  rm -f "$pidfile"
fi

nohup python -m flows.worker --pool mrkd-process --type process \
  >"$HOME/prefect-worker.log" 2>&1 &
echo $! >"$pidfile"
echo "Prefect worker (python -m flows.worker) running, pid $(cat "$pidfile"), log: $HOME/prefect-worker.log"
