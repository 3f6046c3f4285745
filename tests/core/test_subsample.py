"""Subsampling a split (``train_subsample``/``test_subsample``): seeded, nested, stratified, keyed, run end to end."""

from __future__ import annotations

from collections import Counter

import pytest

from mrkd_core.config import MRKDConfig
from mrkd_core.data.base import Sample
from mrkd_core.data.selection import subsample_test, subsample_train
from mrkd_core.data.synthetic import make_synthetic_mvtec
from mrkd_core.engine import train_evaluate
from mrkd_core.errors import ConfigError
from mrkd_core.results import read_parquet_bytes
from mrkd_core.specs import DatasetEntry, Task, parse_spec
from mrkd_core.storage import ArtifactStore


def _samples(groups: dict[tuple[int, str], int]) -> list[Sample]:
    out = []
    for (label, kind), n in groups.items():
        out += [Sample(f"{kind}/{i:03d}.png", None, label, kind, "c") for i in range(n)]
    return out


def test_train_subsample_is_seeded_nested_and_keeps_the_order():
    train = _samples({(0, "good"): 50})
    a = subsample_train(train, 10)
    assert len(a) == 10 and a == subsample_train(train, 10)
    assert a == sorted(a, key=train.index)  # the split's order
    assert set(s.path for s in a) <= set(s.path for s in subsample_train(train, 20))  # nested
    assert subsample_train(train, 0) == train and subsample_train(train, 99) == train


def test_test_subsample_keeps_every_group_in_proportion():
    test = _samples({(0, "good"): 60, (1, "crack"): 30, (1, "dent"): 8, (1, "rare"): 2})
    sub = subsample_test(test, 20)
    counts = Counter(s.defect_type for s in sub)
    # one of each group first, the other 16 by the groups' remaining sizes (59, 29, 7, 1), largest remainders
    assert len(sub) == 20 and counts == {"good": 11, "crack": 6, "dent": 2, "rare": 1}
    assert sub == subsample_test(test, 20) and sub == sorted(sub, key=test.index)
    assert subsample_test(test, 0) == test and subsample_test(test, 100) == test
    assert set(Counter(s.defect_type for s in subsample_test(test, 4))) == {"good", "crack", "dent", "rare"}


def test_config_and_spec_option_key_the_subsample(tmp_path):
    with pytest.raises(ConfigError, match="train_subsample"):
        MRKDConfig(train_subsample=-1)
    doc = {"name": "s", "datasets": [{"name": "folder", "root": "a", "categories": ["x"], "subsample": {"train": 5}},
                                     {"name": "folder", "root": "b", "categories": ["x"]}]}
    spec = parse_spec(doc, "s.yaml")
    sub, whole = spec.tasks(str(tmp_path))
    assert (sub.config.train_subsample, sub.config.test_subsample) == (5, 0)
    assert whole.config.train_subsample == 0 and sub.key != whole.key  # other data, other key
    assert DatasetEntry.from_dict(spec.datasets[0].to_dict()) == spec.datasets[0]
    assert Task.from_dict(sub.to_dict()) == sub


def test_a_subsampled_run_trains_and_tests_on_the_subsample(tmp_path):
    root = make_synthetic_mvtec(tmp_path / "d", categories=("obj_disc",), n_train=6, n_test_good=4, n_test_defect=6,
                                size=32, seed=1)
    cfg = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=32, epochs=1, batch_size=3,
                     num_workers=0, progress=False, device="cpu", train_subsample=3, test_subsample=5)
    store = ArtifactStore(str(tmp_path / "store"))
    out = train_evaluate(Task("folder", "obj_disc", "mrkd", cfg, str(root)), store, "r1")
    info = store.read_json(f"{out.run_dir}/train.json")
    assert info["n_train"] == 3
    scores = read_parquet_bytes(store.read_bytes(f"{out.run_dir}/scores.parquet")).to_pandas()
    assert len(scores) == 5 and set(scores["defect_type"]) == {"good", "missing", "blob", "scratch"}
