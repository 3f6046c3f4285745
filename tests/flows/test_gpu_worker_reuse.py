"""How GPU trainings reuse Ray workers and still run on the GPU Ray assigned them.

The pure parts here; ``test_ray_cluster.py`` checks the same on a two-node Ray with
declared GPUs (worker processes reused, ``CUDA_VISIBLE_DEVICES`` left alone).
"""

from __future__ import annotations

import pytest

from flows.ray_runner import (
    ENV_REUSE_GPU_WORKERS,
    RAY_MAX_RETRIES,
    RAY_NOSET_CUDA_ENV,
    check_runner,
    cuda_index,
    ray_options,
    reuse_gpu_workers,
)


def test_gpu_tasks_reuse_workers_and_tell_ray_to_leave_the_visible_devices_alone():
    opts = ray_options(1.0, {"MRKD_STORE": "/s"}, reuse=True)
    assert opts["max_calls"] == 0 and opts["num_gpus"] == 1.0 and opts["max_retries"] == RAY_MAX_RETRIES
    assert opts["runtime_env"] == {"env_vars": {"MRKD_STORE": "/s", RAY_NOSET_CUDA_ENV: "1"}}


def test_without_reuse_each_gpu_task_gets_a_fresh_worker_narrowed_by_ray():
    opts = ray_options(0.5, {"MRKD_STORE": "/s"}, reuse=False)
    assert opts["max_calls"] == 1
    assert opts["runtime_env"] == {"env_vars": {"MRKD_STORE": "/s"}}


def test_cpu_tasks_keep_rays_defaults():
    opts = ray_options(0.0, {}, reuse=True)
    assert "max_calls" not in opts and RAY_NOSET_CUDA_ENV not in opts["runtime_env"]["env_vars"]


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("1", True), ("true", True), ("0", False),
                                                 ("off", False), ("False", False)])
def test_reuse_setting(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(ENV_REUSE_GPU_WORKERS, raising=False)
    else:
        monkeypatch.setenv(ENV_REUSE_GPU_WORKERS, value)
    assert reuse_gpu_workers() is expected


def test_a_bad_reuse_setting_fails_before_any_work_and_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_REUSE_GPU_WORKERS, "maybe")
    with pytest.raises(ValueError, match=ENV_REUSE_GPU_WORKERS):
        check_runner("ray")
    check_runner("local")  # no Ray, nothing to reuse


@pytest.mark.parametrize(("gpu_ids", "visible", "narrowed", "index"), [
    ([3], "3", True, 0),                  # Ray's default: the task's GPU is the only visible one
    ([3], None, False, 3),                # all of the node's GPUs visible: the physical index
    (["2"], "6,2,4", False, 1),           # the node restricts its GPUs: the position in its list
    (["GPU-ab12"], "GPU-77,GPU-ab12", False, 1),  # UUIDs
    ([1, 2], None, False, 1),             # several GPUs: the training uses the first
])
def test_cuda_index_of_the_assigned_gpu(gpu_ids, visible, narrowed, index):
    assert cuda_index(gpu_ids, visible, narrowed) == index


def test_cuda_index_errors_name_the_problem():
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES='0,1'"):
        cuda_index([5], "0,1", ray_narrowed=False)
    with pytest.raises(ValueError, match="no GPU"):
        cuda_index([], None, ray_narrowed=False)
    with pytest.raises(ValueError, match="unset"):
        cuda_index(["GPU-ab12"], None, ray_narrowed=False)


def test_outside_ray_the_training_picks_its_device_as_usual():
    from flows.ray_runner import assigned_gpu

    with assigned_gpu() as index:
        assert index is None


class _FakeCuda:
    """What ``assigned_gpu`` asks of ``torch.cuda``, recorded (no GPU on the test machines)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def is_available(self) -> bool:
        return True

    def device(self, index: int):
        import contextlib

        calls = self.calls

        @contextlib.contextmanager
        def scope():
            calls.append(("enter", index))
            try:
                yield
            finally:
                calls.append(("exit", index))
        return scope()

    def empty_cache(self) -> None:
        self.calls.append(("empty_cache",))


@pytest.mark.parametrize(("noset", "visible", "index"), [("1", "6,2", 1), (None, "2", 0)])
def test_a_training_runs_on_the_assigned_gpu_and_leaves_it_empty_even_when_it_fails(monkeypatch, noset, visible,
                                                                                   index):
    import torch

    import flows.ray_runner as rr

    fake = _FakeCuda()
    monkeypatch.setattr(rr, "_ray_gpu_ids", lambda: ["2"])
    monkeypatch.setattr(torch, "cuda", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if noset is None:
        monkeypatch.delenv(RAY_NOSET_CUDA_ENV, raising=False)
    else:
        monkeypatch.setenv(RAY_NOSET_CUDA_ENV, noset)
    with rr.assigned_gpu() as got:
        assert got == index and fake.calls == [("enter", index)]
    assert fake.calls[-2:] == [("exit", index), ("empty_cache",)]
    fake.calls.clear()
    with pytest.raises(RuntimeError, match="boom"), rr.assigned_gpu():
        raise RuntimeError("boom")
    assert fake.calls == [("enter", index), ("exit", index), ("empty_cache",)]
