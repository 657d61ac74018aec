"""A local save_pretrained folder runs on the built-in data without building built-in models."""

from prm_check.models import builtin
from prm_check.pipeline import load_inputs
from prm_check.spec import default_spec
from tests.conftest import make_tiny_opt


def test_local_model_gets_builtin_data_without_training(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("load_builtin must not run for a local model")

    monkeypatch.setattr(builtin, "load_builtin", refuse)
    tok, splits = builtin.build_data(0)
    model = make_tiny_opt(vocab=len(tok))
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    inp = load_inputs(default_spec(), model_override=str(tmp_path))
    assert inp.reference_model is None and inp.planted_units == []
    assert inp.splits.members_eval == splits.members_eval
    assert len(inp.splits.canary_references) >= 1000
    assert inp.info["source"] == str(tmp_path.resolve()) and len(inp.info["hash"]) == 64
