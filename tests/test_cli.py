"""The command line fails fast and readably on bad input, before any heavy work."""

from prm_check.cli import main


def test_missing_model_path_is_named(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    assert main(["run", "--model", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_malformed_spec_names_the_field(capsys, tmp_path):
    spec = tmp_path / "bad.prm.toml"
    spec.write_text("[sweep]\nlevels = [0.0, -0.1]\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sweep.levels" in err and "-0.1" in err
    assert not (tmp_path / "out").exists()


def test_plan_runs_without_weights(capsys):
    assert main(
        ["plan", "--model", "opt-1.3b", "--batch", "4", "--seq", "128", "--budget", "4GiB"]
    ) in (0, 1)
    out = capsys.readouterr().out
    assert "predicted peak" in out and "1,315,758,080" in out
