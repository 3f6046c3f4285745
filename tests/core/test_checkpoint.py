"""Checkpoints stored by a background thread: the same content as a write in the loop, errors not lost."""

from __future__ import annotations

import io
import logging
import threading

import pytest
import torch

from mrkd_core.checkpoint import CheckpointWriter, load_latest_checkpoint, save_checkpoint
from mrkd_core.config import MRKDConfig
from mrkd_core.errors import StorageError
from mrkd_core.model import build_mrkd, mrkd_loss
from mrkd_core.storage import ArtifactStore
from mrkd_core.train import build_optimizer

CFG = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=32, batch_size=2, num_workers=0,
                 progress=False, device="cpu")


def _trained_one_step():
    torch.manual_seed(0)
    model = build_mrkd(CFG).train()
    opt = build_optimizer(model, CFG)
    x = torch.randn(2, 3, 32, 32)
    f_t, f_g = model.forward_train(x, x.flip(-1), generator=torch.Generator().manual_seed(1))
    mrkd_loss(f_t, f_g).backward()
    opt.step()
    return model, opt


def _load(store: ArtifactStore, epoch: int) -> dict:
    return torch.load(io.BytesIO(store.read_bytes(f"epoch-{epoch:04d}.pt")), map_location="cpu", weights_only=True)


def _assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


class _SlowStore(ArtifactStore):
    """Holds every checkpoint write until released, so the test can change the model meanwhile."""

    def __init__(self, root):
        super().__init__(root)
        self.release = threading.Event()

    def write_bytes(self, rel, data):
        if rel.endswith(".pt"):
            assert self.release.wait(30)
        return super().write_bytes(rel, data)


def test_background_write_stores_the_state_of_when_save_was_called(tmp_path):
    model, opt = _trained_one_step()
    reference = ArtifactStore(str(tmp_path / "sync"))
    save_checkpoint(reference, model, opt, CFG, 1, [0.5])

    store = _SlowStore(str(tmp_path / "async"))
    writer = CheckpointWriter(store)
    writer.save(model, opt, CFG, 1, [0.5])  # returns while the write is held
    with torch.no_grad():  # training goes on: parameters and Adam's moments change in place
        for p in model.trainable_parameters():
            p.add_(1.0)
            opt.state[p]["exp_avg"].add_(1.0)
    store.release.set()
    writer.wait()
    writer.close()

    stored, expected = _load(store, 1), _load(reference, 1)
    _assert_same(stored, expected)
    assert store.read_json("epoch-0001.pt.sha256.json")["size"] == len(store.read_bytes("epoch-0001.pt"))
    assert load_latest_checkpoint(store, CFG)["epoch"] == 1  # verified against its sidecar


class _FailingStore(ArtifactStore):
    def write_bytes(self, rel, data):
        raise StorageError(f"cannot write {rel} to {self.uri()}: disk full")


def test_a_failed_background_write_is_raised_by_the_next_save_or_wait(tmp_path, caplog):
    model, opt = _trained_one_step()
    writer = CheckpointWriter(_FailingStore(str(tmp_path / "store")))
    writer.save(model, opt, CFG, 1, [0.5])
    with pytest.raises(StorageError, match="epoch-0001.pt.*disk full"):
        writer.save(model, opt, CFG, 2, [0.5, 0.4])
    writer.save(model, opt, CFG, 3, [0.5, 0.4, 0.3])
    with pytest.raises(StorageError, match="epoch-0003.pt"):
        writer.wait()
    writer.save(model, opt, CFG, 4, [0.5, 0.4, 0.3, 0.2])
    with caplog.at_level(logging.ERROR, logger="mrkd_core.checkpoint"):
        writer.close()  # in a finally block: reported, not raised over the exception in flight
    assert "epoch-0004.pt" in caplog.text and "disk full" in caplog.text


def test_training_fails_when_its_checkpoints_cannot_be_stored(tmp_path):
    from mrkd_core.data import get_dataset
    from mrkd_core.data.synthetic import make_synthetic_mvtec
    from mrkd_core.train import train

    make_synthetic_mvtec(tmp_path / "data", categories=("tex_stripes",), n_train=4, n_test_good=1,
                         n_test_defect=1, size=32, seed=0)
    samples = get_dataset("folder").train_samples(str(tmp_path / "data"), "tex_stripes")
    with pytest.raises(StorageError, match="disk full"):
        train(CFG.replace(epochs=2), samples, "tex_stripes", checkpoints=_FailingStore(str(tmp_path / "ck")))


def test_a_checkpoint_of_the_old_naming_still_resumes(tmp_path):
    """Checkpoints written while OCBE was ``Bottleneck`` (keys ``bottleneck.*``) resume with every weight."""
    from mrkd_core.checkpoint import checkpoint_state, resume_training, write_checkpoint

    model, opt = _trained_one_step()
    state = checkpoint_state(model, opt, CFG, 1, [0.5])
    state["model"] = {("bottleneck." + k[len("ocbe."):] if k.startswith("ocbe.") else k): v
                      for k, v in state["model"].items()}
    assert any(k.startswith("bottleneck.") for k in state["model"])
    store = ArtifactStore(str(tmp_path / "ck"))
    write_checkpoint(store, state)
    torch.manual_seed(1)
    fresh = build_mrkd(CFG)
    fresh_opt = build_optimizer(fresh, CFG)
    assert resume_training(store, CFG, fresh, fresh_opt) == (1, [0.5])
    want, got = model.state_dict(), fresh.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("teacher."))
