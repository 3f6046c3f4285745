"""Experiment specs: loading, validation errors that name the file and key, narrowing, tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mrkd_core.errors import ConfigError
from mrkd_core.specs import DatasetEntry, Task, available_specs, load_spec, parse_search_path, parse_spec, prepare_data

SPECS = [Path(__file__).resolve().parents[2] / "flows" / "specs"]  # the flows' specs, passed as the flows do

REQUIRED = {"smoke", "demo", "mvtec-full", "table1-2", "table3", "table4", "table5", "table6", "fig11",
            "table7", "table8"}


def test_every_shipped_spec_loads():
    assert REQUIRED <= set(available_specs(SPECS))
    for name in available_specs(SPECS):
        spec = load_spec(name, SPECS)
        assert spec.name == name and spec.configs()


def test_ablation_specs_have_the_papers_cells():
    t5 = load_spec("table5", SPECS).configs()
    assert (t5["baseline"].ilm, t5["baseline"].flm) == (False, False)
    assert (t5["mrkd"].ilm, t5["mrkd"].flm) == (True, True)
    assert sorted(c.ilm_fraction for c in load_spec("table6", SPECS).configs().values()) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert sorted(c.flm_ratio for c in load_spec("fig11", SPECS).configs().values()) == [0, 0.2, 0.4, 0.6, 0.8]
    assert len(load_spec("table7", SPECS).scale_sets) == 6
    assert {c.backbone for c in load_spec("table8", SPECS).configs().values()} == {
        "resnet18", "resnet50", "wide_resnet50_2"}
    full = load_spec("mvtec-full", SPECS).configs()["mrkd"]
    assert (full.epochs, full.image_size, full.backbone, full.teacher_weights) == (200, 256, "wide_resnet50_2", "imagenet")


@pytest.mark.parametrize("doc,fragment", [
    ({"name": "x", "datasets": [{"name": "mvtec"}], "bogus": 1}, "unknown key(s) ['bogus']"),
    ({"name": "x", "datasets": [{"name": "mvtec", "categoris": "all"}]}, "datasets[0]"),
    ({"name": "x", "datasets": [{"name": "mvtec"}], "base": {"epochs": "many"}}, "'epochs' must be int"),
    ({"name": "x", "datasets": [{"name": "mvtec"}], "variants": {"v": {"flm_ratio": 2.0}}}, "variant 'v'"),
    ({"name": "x", "datasets": []}, "'datasets' must be a non-empty list"),
    ({"name": "x", "datasets": [{"name": "mvtec"}], "scale_sets": [[4]]}, "scale_sets"),
    ([1, 2], "the spec must be a mapping"),
])
def test_bad_specs_name_file_and_key(doc, fragment):
    with pytest.raises(ConfigError) as err:
        parse_spec(doc, "specs/bad.yaml")
    assert "specs/bad.yaml" in str(err.value) and fragment in str(err.value)


def test_unknown_spec_lists_the_available_ones():
    with pytest.raises(ConfigError, match="smoke"):
        load_spec("no-such-spec", SPECS)


def test_specs_are_found_along_the_search_path_first_folder_first(tmp_path, monkeypatch):
    """The library reads no folder and no variable of its own: the caller passes the search path."""
    ours = tmp_path / "team-specs"
    ours.mkdir()
    (ours / "smoke.yaml").write_text("name: smoke\ndatasets: [{name: folder, categories: [a]}]\n")
    (ours / "extra.yaml").write_text("name: extra\ndatasets: [{name: folder}]\n")
    monkeypatch.setenv("MRKD_SPEC_PATH", str(ours))  # ignored by the library itself
    with pytest.raises(ConfigError, match="MRKD_SPEC_PATH"):
        load_spec("extra")
    path = parse_search_path(f"{ours}{os.pathsep}{tmp_path / 'missing'}")
    assert path == [ours, tmp_path / "missing"] and parse_search_path("") == []
    assert load_spec("smoke", [*path, *SPECS]).datasets[0].categories == ("a",)  # shadows the shipped one
    assert load_spec("smoke", SPECS).datasets[0].categories == ("tex_stripes", "obj_disc")
    assert {"extra", "smoke", "table1-2"} <= set(available_specs([*path, *SPECS]))
    assert load_spec(str(ours / "extra.yaml")).name == "extra"  # a path needs no search path


def test_dataset_entries_serialise_themselves():
    for entry in load_spec("smoke", SPECS).datasets + load_spec("table1-2", SPECS).datasets:
        d = entry.to_dict()
        assert json.loads(json.dumps(d)) == d and DatasetEntry.from_dict(d) == entry


def test_narrowing_and_task_roundtrip(tmp_path):
    spec = load_spec("smoke", SPECS).narrow(categories=["obj_disc"], epochs=2, image_size=32)
    assert spec.narrowed
    prepare_data(spec, str(tmp_path))
    tasks = spec.tasks(str(tmp_path))
    assert [t.category for t in tasks] == ["obj_disc"]
    t = tasks[0]
    assert t.narrowed and t.config.epochs == 2 and t.config.image_size == 32
    assert Task.from_dict(t.to_dict()) == t
    assert t.key == f"folder/obj_disc/{t.config.config_hash()}"
    # generation is idempotent: the second call makes nothing
    assert prepare_data(spec, str(tmp_path)) == []


def test_narrowing_categories_keeps_the_datasets_that_have_them():
    # The demo spec has ELPV (mono) and a generated folder (tex_stripes, obj_disc): `make demo
    # ARGS="--categories obj_disc"` trains obj_disc only, not an ELPV category obj_disc.
    demo = load_spec("demo", SPECS)
    assert [(d.name, d.categories) for d in demo.narrow(categories=["obj_disc"]).datasets] == [
        ("folder", ("obj_disc",))]
    both = demo.narrow(categories=["mono", "tex_stripes"])
    assert [(d.name, d.categories) for d in both.datasets] == [("elpv", ("mono",)), ("folder", ("tex_stripes",))]
    assert both.datasets[0].subsample == demo.datasets[0].subsample  # the rest of the entry is kept
    with pytest.raises(ConfigError, match=r"\['bottle'\] are in none of its datasets; choose from "
                                          r"\['mono', 'obj_disc', 'tex_stripes'\]"):
        demo.narrow(categories=["obj_disc", "bottle"])
    every = parse_spec({"name": "x", "datasets": [{"name": "folder", "root": "r"}]}, "x.yaml")
    assert every.narrow(categories=["mine"]).datasets[0].categories == ("mine",)  # every category found: any name


def test_all_categories_need_data(tmp_path):
    from mrkd_core.errors import MRKDError

    with pytest.raises(MRKDError, match="download it first"):
        load_spec("table4", SPECS).tasks(str(tmp_path))


def test_benchmark_specs_run_mrkd_and_its_rd4ad_ablation_at_the_papers_hyperparameters():
    from mrkd_core.config import MRKDConfig

    for name, dataset in (("visa", "visa"), ("mvtec-ad2", "mvtec_ad2"), ("mvtec-loco", "mvtec_loco")):
        spec = load_spec(name, SPECS)
        assert [(d.name, d.categories) for d in spec.datasets] == [(dataset, None)], name  # every category
        configs = spec.configs()
        assert configs == {"mrkd": MRKDConfig(), "baseline": MRKDConfig(ilm=False, flm=False)}, name
