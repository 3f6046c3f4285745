"""The README's inspection recipe, run as typed: the threshold the line gets was not chosen on the
images `mrkd evaluate` reports on.

The commands are read from README.md's "For inspection engineers" block and run in order in
a folder holding ``parts/bracket/`` (a generated MVTec-layout category) and ``new_images/``,
through ``mrkd_core.cli.main`` (the ``mrkd`` command without a new interpreter per line);
``NAME=$(ls PATTERN)`` and ``$NAME`` are the only shell the block uses.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import re
import shlex
import shutil
from pathlib import Path

from mrkd_core.cli import main
from mrkd_core.data.synthetic import make_synthetic_mvtec
from mrkd_core.inference.commands import model_info

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## For inspection engineers"


def readme_recipe() -> list[list[str]]:
    """The commands of the first code block of the README's inspection section, tokenised (comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = (shlex.split(raw, comments=True) for raw in block.replace("\\\n", " ").splitlines())
    return [tokens for tokens in lines if tokens]


def run_recipe(commands: list[list[str]], cwd: Path) -> dict[str, str]:
    """Each command in ``cwd``: ``mrkd …`` through ``cli.main`` (exit 0 required), ``NAME=$(ls PATTERN)``
    assigned; returns what each ``mrkd`` command printed, keyed by its line."""
    variables: dict[str, str] = {}
    printed: dict[str, str] = {}
    for tokens in commands:
        line = " ".join(tokens)
        assignment = re.fullmatch(r"([A-Z_]+)=\$\(ls (\S+)\)", line)
        if assignment:
            (match,) = glob.glob(str(cwd / assignment.group(2)))
            variables[assignment.group(1)] = match
            continue
        argv = [variables[t[1:]] if t.startswith("$") else t for t in tokens]
        assert argv[0] == "mrkd", f"the recipe runs only mrkd commands: {line}"
        out = io.StringIO()
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out):
            code = main(["-q", *argv[1:]])
        assert code == 0, f"`{line}` exited {code}"
        printed[line] = out.getvalue()
    return printed


def test_the_readme_recipe_ends_with_a_threshold_not_chosen_on_the_evaluation_images(tmp_path):
    commands = readme_recipe()
    assert [c[:2] for c in commands if c[0] == "mrkd"][1] == ["mrkd", "train"] and ["mrkd", "evaluate"] in \
        [c[:2] for c in commands]
    make_synthetic_mvtec(tmp_path / "gen", categories=("obj_disc",), n_train=10, n_test_good=2, n_test_defect=2,
                         size=64, seed=4)
    shutil.copytree(tmp_path / "gen" / "obj_disc", tmp_path / "parts" / "bracket")
    shutil.copytree(tmp_path / "gen" / "obj_disc" / "test", tmp_path / "new_images")

    printed = run_recipe(commands, tmp_path)

    # What the line gets: the export's calibration (the last model file of the recipe).
    (info,) = [json.loads(out) for line, out in printed.items() if line.startswith("mrkd models info")]
    calibration = info["calibration"]
    assert calibration is not None, "the recipe hands an uncalibrated model to the line"
    assert calibration["on_evaluation_images"] is False, calibration["source"]
    assert calibration["source"] == "held-out train/good" and calibration["n_defective"] == 0
    # ... and the evaluation reports on other images than those: every verdict says so.
    (scores,) = list((tmp_path / "models" / "evaluations").rglob("scores.csv"))
    rows = list(csv.DictReader(scores.open()))
    assert rows and {r["on_evaluation_images"] for r in rows} == {"False"}
    chosen_on = model_info(str(tmp_path / "bracket.onnx"))["calibration"]["images"]
    assert chosen_on and not {Path(r["path"]).resolve() for r in rows} & {Path(p).resolve() for p in chosen_on}
