"""`python -m flows.benchmark`: a bad spec is one line on stderr and exit code 2, before any server starts."""

from flows.benchmark import main


def test_unknown_spec_is_one_line(capsys):
    assert main(["--spec", "no-such-spec"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-spec" in err and "smoke" in err


def test_bad_narrowing_is_one_line(capsys):
    assert main(["--spec", "smoke", "--image-size", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert "image_size" in err and len(err.splitlines()) == 1
