"""What a training's task run says of its attempts, from Ray's record (no server, no Ray).

The whole path (Ray workers SIGKILLed inside ``mrkd-benchmark``, what the Prefect API then
shows) is ``test_ray_worker_kill.py``; here the sentences it is built from.
"""

from __future__ import annotations

from ray.exceptions import WorkerCrashedError

from flows.attempts import RayAttempt, current_attempt, dead_attempts, deaths, failure_message, worker_died
from flows.train_evaluate import failure_text, resume_text
from mrkd_core.errors import DataError

KILLED = "its worker process died without returning (killed by a signal such as SIGKILL"


def test_deaths_say_each_cause_once_with_each_attempts_worker():
    a1 = RayAttempt(1, "FAILED", "WORKER_DIED", worker_pid=3719, node_id="f5b6a6af50d0ad107fc6")
    a2 = RayAttempt(2, "FAILED", "WORKER_DIED", worker_pid=3785, node_id="f5b6a6af50d0ad107fc6")
    a3 = RayAttempt(3, "FAILED", "OUT_OF_MEMORY", "Task was killed due to the node running low on memory.\nMore",
                    worker_pid=3800)
    assert a1.death() == f"attempt 1 (Ray worker pid 3719 on node f5b6a6af) died: {KILLED}" + a1.cause()[len(KILLED):]
    text = deaths([a1, a2, a3])
    assert text.startswith("attempt 1 (Ray worker pid 3719 on node f5b6a6af) and attempt 2 (Ray worker pid 3785 "
                           f"on node f5b6a6af) died: {KILLED}"), text
    assert text.endswith("; attempt 3 (Ray worker pid 3800; Ray: Task was killed due to the node running low on "
                         "memory.) died: Ray's memory monitor killed its worker process: the node ran low on memory")
    assert text.count("SIGKILL") == 1


def test_a_failed_future_names_its_error_and_only_a_dead_worker_makes_it_every_attempt():
    assert failure_message(DataError("x.png: cannot read image"), None, 3) == "DataError: x.png: cannot read image"
    crashed = WorkerCrashedError()
    assert worker_died(crashed) and not worker_died(RuntimeError("boom"))
    # Without Ray's record (no task id here), each attempt is what Ray's re-runs imply: its worker died.
    message = failure_message(crashed, None, 3)
    assert message.startswith("every attempt died (3): attempt 1 (Ray worker), attempt 2 (Ray worker) and attempt 3 "
                              f"(Ray worker) died: {KILLED}"), message
    assert "; last error: WorkerCrashedError: The worker died unexpectedly" in message
    assert [a.number for a in dead_attempts(None, 2)] == [1, 2]
    assert current_attempt() == 1  # not in a Ray task


def test_a_resumed_attempt_says_where_and_which_epochs_it_trains_again():
    assert resume_text(1, 6, 1, 1) == "resumed from epoch 1/6: the newest checkpoint stored"
    assert resume_text(1, 6, 2, 1).endswith("an earlier attempt had finished epoch 2, so epoch 2 is trained again "
                                            "(a checkpoint is stored every 1 epoch(s), written in the background while "
                                            "training goes on: the newest stored one can be up to 2 epochs behind the "
                                            "last epoch logged)")
    # The case: 15 epochs, epoch 4 logged (26.67 %), resumed from epoch 2.
    assert "; an earlier attempt had finished epoch 4, so epochs 3-4 are trained again" in resume_text(2, 15, 4, 1)
    assert failure_text(26.67, 15, "WorkerCrashedError: x") == "failed at 26.7 % (epoch 4/15): WorkerCrashedError: x"
