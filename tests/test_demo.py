"""`effgen demo` end to end (quick settings) and its behaviour without the models extra."""

import importlib.util
import json
import sys
import time

import pytest
import torch

import effgen_kernels as ek
from effgen_kernels import demo, gpt


def test_quick_demo_reports_every_stage(tmp_path):
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    ddp = report["ddp"]
    plain = ddp["plain"]["bytes_per_step"]
    assert ddp["int8"]["bytes_per_step"] / plain < 0.27 and ddp["sign"]["bytes_per_step"] / plain < 0.04
    assert 0.06 < ddp["sign-adam"]["bytes_per_step"] / plain < 0.07  # 1 bit and 2 fp32 levels a 64 values
    assert ddp["int8"]["losses"][-1] <= ddp["plain"]["losses"][-1] * 1.02
    sign_change = ddp["sign"]["losses"][-1] / ddp["plain"]["losses"][-1] - 1
    assert f"({sign_change:+6.1%})" in demo.summary(report)  # the quality cost, shown
    distill = report["distill"]
    assert distill["ternary_distilled"] < distill["ternary_no_training"]  # training recovers what ternary lost
    assert report["device"] == distill["device"] == "cpu"
    if "quantize" in report:  # the models extra is installed
        q = report["quantize"]
        assert q["device"] == "cpu" and q["baseline"] == "fp32" and list(q["formats"]) == ["fp32", "W8A16", "W8A8",
                                                                                             "ternary"]
        fp32, w8a16 = q["formats"]["fp32"], q["formats"]["W8A16"]
        assert w8a16["perplexity"] < fp32["perplexity"] * 1.02
        assert w8a16["weight_bytes"] < 0.5 * fp32["weight_bytes"]
        assert fp32["text"] and w8a16["text"] and fp32["peak_memory_mib"] > 0
    pytest.importorskip("matplotlib")
    assert (tmp_path / "ddp_loss.png").stat().st_size > 0


def test_without_the_models_extra_stage_one_is_skipped_with_a_message(tmp_path, monkeypatch, capsys):
    # transformers neither found nor importable, as where the extra is not installed
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers"
                        else find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert demo.main(["--quick", "--out", str(tmp_path), "--skip", "ddp", "distill"]) == 0
    assert "skipping stage 1 (quantize): transformers is not installed" in capsys.readouterr().err
    assert "quantize" not in json.loads((tmp_path / "report.json").read_text())


def test_an_unknown_stage_to_skip_is_refused_with_the_stages(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        demo.main(["--quick", "--out", str(tmp_path), "--skip", "ddp", "quantise"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --skip: invalid choice: 'quantise' (choose from" in err  # Python quotes the choices or not
    assert all(stage in err.split("choose from")[1] for stage in demo.STAGES)
    assert not (tmp_path / "report.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_with_a_message(tmp_path, capsys):
    assert demo.main(["--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda needs a visible GPU" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_an_out_directory_it_cannot_write_is_refused_with_a_message(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert demo.main(["--quick", "--out", str(blocker / "out")]) == 2
    assert f"effgen demo: cannot write to --out ({blocker / 'out'}): Not a directory" in capsys.readouterr().err


def test_auto_device_is_the_gpu_only_where_usable():
    expected = "cuda" if torch.cuda.is_available() and ek.ops.built_with_cuda() else "cpu"
    assert demo.pick_device("auto").type == expected
    assert demo.pick_device("cpu").type == "cpu"


@pytest.mark.cuda
def test_cuda_demo_distills_on_the_gpu(tmp_path):
    # The GPU image has no models extra: stage 1 skips with its message, stage 3 runs on the GPU.
    assert demo.main(["--quick", "--device", "cuda", "--out", str(tmp_path), "--skip", "ddp"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    distill = report["distill"]
    assert report["device"].startswith("cuda") and distill["device"].startswith("cuda")
    assert distill["ternary_distilled"] < distill["ternary_no_training"]
    if "quantize" in report:
        q = report["quantize"]["formats"]
        assert report["quantize"]["baseline"] == "bf16" and q["W8A16"]["perplexity"] < q["bf16"]["perplexity"] * 1.02


def test_peak_memory_sees_a_short_lived_peak_on_the_cpu(monkeypatch):
    # A scripted resident size (a real allocation need not move it: effgen bench tells glibc
    # to keep freed memory, so a later block may reuse resident pages): 100 MiB, 500 MiB for
    # a moment inside the block, 100 MiB again before it ends.
    resident = {"mib": 100.0}
    monkeypatch.setattr(demo, "rss_mib", lambda: resident["mib"])
    with demo.PeakMemory(torch.device("cpu")) as peak:
        resident["mib"] = 500.0
        deadline = time.monotonic() + 5
        while peak.mib < 500.0 and time.monotonic() < deadline:
            time.sleep(0.001)
        resident["mib"] = 100.0
        time.sleep(0.01)
    assert peak.mib == 500.0  # the peak, not the size at the end


def test_unknown_stage_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--skip", "everything"])
    assert exit_info.value.code == 2


class ByteTokenizer:
    """The part of a Hugging Face tokenizer the demo uses, over UTF-8 bytes (ids 0-255)."""

    eos_token_id = 0

    def __call__(self, text, return_tensors="pt"):
        return {"input_ids": torch.tensor([list(text.encode())])}

    def decode(self, ids, skip_special_tokens=True):
        return bytes(int(i) for i in ids).decode(errors="replace")


def tiny_llama(dtype):
    """A 2-layer Llama (SmolLM2's architecture) with random weights: stage 1's code without
    the models extra, which the GPU image lacks (it has transformers)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def check_formats(results, baseline):
    rows = results["formats"]
    assert results["baseline"] == baseline and list(rows) == [baseline, "W8A16", "W8A8", "ternary"]
    for name, row in rows.items():
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0 and row["peak_memory_mib"] > 0, name
        assert isinstance(row["text"], str) and torch.isfinite(torch.tensor(row["perplexity"])), name
    assert rows["W8A16"]["weight_bytes"] < rows[baseline]["weight_bytes"]
    assert rows["ternary"]["weight_bytes"] < rows["W8A16"]["weight_bytes"]
    # int8 weights barely move a model's predictions; ternary ones are far coarser
    assert abs(rows["W8A16"]["perplexity"] / rows[baseline]["perplexity"] - 1) < 0.01
    # speculative decoding drafted by the W8A8 copy: the draft's tokens taken (more than one
    # a forward); in fp32 the model's own text (a bf16 forward over several tokens rounds
    # otherwise than one at a time, and greedy decoding follows)
    drafted = results["speculative"]
    assert drafted["decode_tokens_per_s"] > 0 and drafted["tokens_per_forward"] > 1
    assert drafted["same_text"] or baseline != "fp32"


def test_stage_one_measures_each_format_of_a_llama():
    text = gpt.stdlib_source_bytes(4096)[0][:512].long()
    results = demo.compare_formats(tiny_llama(torch.float32), ByteTokenizer(), text, torch.device("cpu"), quick=True)
    assert results["device"] == "cpu"
    check_formats(results, "fp32")


def test_stage_one_compiles_the_decode_of_each_quantized_format():
    # The quantized layers inside Hugging Face's generate, compiled whole (inductor,
    # fullgraph) over a static KV cache: each format gives eager's greedy text. (W8A8 is not
    # held to it: its per-token int8 activations turn a compiled sum's other rounding into
    # other codes, and greedy decoding follows; here it matches too.)
    text = gpt.stdlib_source_bytes(4096)[0][:512].long()
    results = demo.compare_formats(tiny_llama(torch.float32), ByteTokenizer(), text, torch.device("cpu"), quick=True,
                                   compile_decode=True)
    check_formats(results, "fp32")
    for name, row in results["formats"].items():
        assert row["compiled_decode_tokens_per_s"] > 0, name
        if name != "W8A8":
            assert row["compiled_text"] == row["text"], name
    lines = demo.summary({"quantize": results}).splitlines()
    # name, prefill, decode, compiled decode, weights, peak memory, perplexity
    assert " compiled " in lines[1] and len(lines[2].split()) == 7, lines[:3]


@pytest.mark.cuda
def test_cuda_stage_one_runs_on_the_gpu():
    # SmolLM2 itself cannot load on the GPU image (no models extra): the same stage on a small
    # random Llama in bf16, every format on the GPU.
    text = gpt.stdlib_source_bytes(4096)[0][:512].long()
    device = torch.device("cuda")
    results = demo.compare_formats(tiny_llama(torch.bfloat16), ByteTokenizer(), text, device, quick=True)
    assert results["device"].startswith("cuda") and "GPU" in results["memory"]
    check_formats(results, "bf16")
