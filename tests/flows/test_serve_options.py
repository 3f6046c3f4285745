"""``mrkd serve``'s refusals, names and options, before anything starts (no Ray): one line and exit 2.

The service itself is exercised over HTTP in ``test_serve.py``; these cases fail before Ray
would start, through ``mrkd_core.cli.main`` as a user types them.
"""

from __future__ import annotations

import pytest

from flows.serve.app import build
from flows.serve.models import served_models
from mrkd_core.inference.record import recorded_name
from flows.serve.settings import options_from
from mrkd_core import cli
from mrkd_core.errors import ConfigError
from mrkd_core.registry.records import EntryKey, RegisteredModel, write_index, write_version
from mrkd_core.storage import ArtifactStore


@pytest.fixture
def store(tmp_path):
    """A store with two registered entries under `line` and one under `solo` (records only)."""
    s = ArtifactStore(tmp_path / "store")
    for key in (EntryKey("line", "folder", "bracket"), EntryKey("line", "folder", "hinge"),
                EntryKey("solo", "folder", "bracket")):
        model = RegisteredModel(key, versions=[{"version": 1, "run_id": "r", "run_dir": "runs/r", "config_hash": "h",
                                                "variant": "mrkd", "registered_at": "", "decision": "first",
                                                "metrics": {}}])
        model.set_alias("champion", 1, "first", "r", "test")
        write_version(s, key, {"version": 1, "model": f"runs/r/{key.category}/model.pt"})
        write_index(s, model)
    return s


def _error(capsys, *argv: str) -> str:
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_refusals_are_one_line_and_exit_2(capsys, tmp_path, store, monkeypatch):
    monkeypatch.delenv("MRKD_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("MRKD_STORE", raising=False)
    model = tmp_path / "bracket.pt"
    model.write_bytes(b"not a model file")
    err = _error(capsys, str(model), "--host", "0.0.0.0")
    assert "--host 0.0.0.0" in err and "MRKD_SERVE_TOKEN" in err and "--token-file" in err
    (short := tmp_path / "token").write_text("abc\n")
    assert "at least 16 characters" in _error(capsys, str(model), "--host", "0.0.0.0", "--token-file", str(short))
    assert "cannot read it" in _error(capsys, str(model), "--token-file", str(tmp_path / "nope"))
    assert "model file not found" in _error(capsys, str(tmp_path / "missing.pt"), "--record", "none")
    assert "bracket.pt: not a readable MRKD model file" in _error(capsys, str(model), "--record", "none")
    assert "--record URI" in _error(capsys, str(model))  # a file and no store: where would the record go?
    assert "--replicas '0'" in _error(capsys, str(model), "--record", "none", "--replicas", "0")
    assert "two models would be served as 'bracket'" in _error(capsys, str(model), str(model), "--record", "none")
    assert "--engine torch runs a model.pt" in _error(capsys, str(tmp_path / "b.onnx"), "--engine", "torch",
                                                      "--record", "none")
    err = _error(capsys, "line@champion", "--store", store.uri())
    assert "line names 2 registered models" in err and "line/folder/hinge@champion" in err
    assert "no registered model 'nobody'" in _error(capsys, "nobody@champion", "--store", store.uri())


def test_names_references_and_defaults(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MRKD_STORE", raising=False)
    models = served_models(["solo@champion", "hinge-line=line/folder/hinge@latest", "x=/m/bracket.onnx",
                            "/s/runs/r1/folder/gear/0123abcd/model.pt"], store.uri(), None)
    assert [(m.name, m.engine, m.follows) for m in models] == [
        ("bracket", "torch", "champion"), ("hinge-line", "torch", "latest"), ("x", "onnxruntime", None),
        ("gear", "torch", None)]
    assert models[0].location == f"{store.uri()}/models/solo/folder/bracket@champion"
    assert recorded_name("/parts/bracket.onnx") == "bracket"
    options = options_from({"models": ["solo@1"], "store": store.uri(), "replicas": "auto"})
    assert options.record == store.uri() and options.replicas is None and options.max_replicas == 0
    assert options.models[0].follows is None  # a fixed version is loaded once
    assert options_from({"models": ["solo@champion"], "store": store.uri(), "record": "none"}).record is None
    with pytest.raises(ConfigError, match="--max-batch-size"):
        options_from({"models": ["solo@champion"], "store": store.uri(), "max_batch_size": 0})


def test_the_rayservice_builder_refuses_to_serve_without_a_token_off_loopback(store, monkeypatch):
    """No Serve runs here, so the proxy's address is unknown: without MRKD_SERVE_TOKEN, no application."""
    monkeypatch.delenv("MRKD_SERVE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="MRKD_SERVE_TOKEN"):
        build({"models": f"{store.uri()}/models/solo/folder/bracket@champion"})
    monkeypatch.setenv("MRKD_SERVE_TOKEN", "0123456789abcdef0123")
    app = build({"models": f"{store.uri()}/models/solo/folder/bracket@champion", "max_batch_size": "8"})
    assert type(app).__name__ == "Application"
