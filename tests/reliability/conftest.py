"""Fixtures of the reliability tests: tiny data, the reference run, S3 on loopback.

Everything is smoke-sized (ResNet18, random teacher, 32 px, 4 training images, batch 4:
one step per epoch) so that the whole folder runs in a few minutes on 2 CPU cores.
Servers bind 127.0.0.1 only and are stopped by the fixture that started them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from mrkd_core.engine import train_evaluate
from mrkd_core.layout import run_dir
from mrkd_core.specs import Task
from mrkd_core.storage import ArtifactStore
from tests.reliability.relkit import Reference, S3Env, S3Server, make_data, make_task


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread here and in every worker (``--threads``): CPU results are bit-equal only
    at equal thread counts, and on 2 shared cores 2 spinning OpenMP threads run ~5× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- data and tasks
@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One generated MVTec-layout category: 4 train, 2 good + 2 defective test images, 32 px."""
    return make_data(tmp_path_factory.mktemp("rel-data"))


@pytest.fixture(scope="session")
def task3(data_root) -> Task:
    """3 epochs with a checkpoint after each: what the crash tests interrupt."""
    return make_task(data_root, epochs=3)


@pytest.fixture(scope="session")
def reference(task3, tmp_path_factory) -> Reference:
    """The uninterrupted run every crash test must reproduce exactly (fresh store, same seed)."""
    store = ArtifactStore(tmp_path_factory.mktemp("rel-reference") / "store")
    result = train_evaluate(task3, store, "reference")
    assert result.status == "trained" and result.resumed_from_epoch == 0
    return Reference(store, run_dir(task3, "reference"), result)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Env]:
    """A moto S3 server, dummy credentials with a unique random secret, MRKD_S3_ENDPOINT_URL set."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = S3Server()
    secret = "mrkd-secret-" + secrets.token_hex(16)
    access_key = "MRKDTESTKEY" + secrets.token_hex(4).upper()
    env = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
           "MRKD_S3_ENDPOINT_URL": server.endpoint}
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MRKD_S3_TIMEOUT"):
            mp.delenv(k, raising=False)
        for k, v in env.items():
            mp.setenv(k, v)
        import boto3

        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="mrkd-rel")
        try:
            yield S3Env(server, "mrkd-rel", secret, access_key)
        finally:
            server.stop()


@pytest.fixture
def fresh_task(data_root) -> Callable[..., Task]:
    def build(**kw) -> Task:
        return make_task(data_root, **kw)

    return build


