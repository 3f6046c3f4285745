"""``engine.train_evaluate`` in a process of its own: the unit a Ray worker runs.

The crash tests SIGKILL it by PID and run it again as the retry; the concurrency tests
start two at once. Logs go to stderr at INFO; the result dict is written to OUT as JSON.

    python tests/reliability/worker.py TASK_JSON STORE RUN_ID OUT [--force] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("store")
    p.add_argument("run_id")
    p.add_argument("out")
    p.add_argument("--force", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # the same as the reference run: bit-equal results on CPU
    from mrkd_core.checkpoint import CheckpointMode
    from mrkd_core.engine import train_evaluate
    from mrkd_core.specs import Task
    from mrkd_core.storage import ArtifactStore

    with open(args.task) as fh:
        task = Task.from_dict(json.load(fh))
    logging.getLogger("worker").info("pid %d starts %s run %s", os.getpid(), task.key, args.run_id)
    mode = CheckpointMode.FORCED_RUN if args.force else CheckpointMode.RESUME
    result = train_evaluate(task, ArtifactStore(args.store), args.run_id, mode)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result.to_dict(), fh, default=str)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
