"""The tiny CPU model and data the inference tests share: ResNet18, random teacher, 64 px (seconds per test)."""

from pathlib import Path

from mrkd_core.config import MRKDConfig
from mrkd_core.data.synthetic import make_synthetic_mvtec

TINY_CFG = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=64, num_workers=0, device="cpu",
                      progress=False)


def tiny_category(tmp_path_factory, name: str, *, n_train: int, n_test_good: int, n_test_defect: int,
                  seed: int) -> Path:
    """A generated ``obj_disc`` category at 64 px (MVTec layout) in a fresh temporary folder: its root."""
    root = tmp_path_factory.mktemp(name)
    make_synthetic_mvtec(root, categories=("obj_disc",), n_train=n_train, n_test_good=n_test_good,
                         n_test_defect=n_test_defect, size=TINY_CFG.image_size, seed=seed)
    return root


class EpochRecorder(list):
    """An epoch reporter (``mrkd_core.progress.EpochReporter``) that keeps every ``EpochProgress`` it is given."""

    closed = False

    def report(self, progress) -> None:
        self.append(progress)

    def close(self) -> None:
        self.closed = True
