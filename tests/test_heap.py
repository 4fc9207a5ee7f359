"""Giving the C heap's free pages back while layers convert (effgen_kernels/_heap.py)."""

import pytest
import torch
from torch import nn

import effgen_kernels as ek
from effgen_kernels import _heap
from effgen_kernels.quantize import QuantizeOnLoad


def resident_anonymous_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(_heap._malloc_trim() is None, reason="not Linux with glibc")
def test_release_free_heap_gives_the_holes_between_live_tensors_back():
    # 96 KiB blocks sit below glibc's smallest mmap threshold, so they come from the heap;
    # the small tensor after each keeps the hole its block leaves from being the heap's top,
    # which is all glibc gives back by itself.
    blocks, kept = [], []
    for _ in range(2000):
        blocks.append(torch.ones(96 * 1024, dtype=torch.int8))
        kept.append(torch.ones(8))
    before = resident_anonymous_mib()
    del blocks
    freed_but_held = resident_anonymous_mib()
    _heap.release_free_heap()
    after = resident_anonymous_mib()
    assert freed_but_held > before - 30  # the 188 MiB freed are still resident...
    assert after < freed_but_held - 150  # ...until trimmed
    assert abs(_heap.resident_anonymous_bytes() / 2**20 - after) < 5  # statm's count is status's
    assert all(t.sum() == 8 for t in kept)  # what lives between the holes is untouched


def scripted_resident(monkeypatch, values: list[int]) -> list[int]:
    """resident_anonymous_bytes gives ``values`` in turn; returns the list release_free_heap
    appends to at each call."""
    calls, upcoming = [], iter(values)
    monkeypatch.setattr(_heap, "resident_anonymous_bytes", lambda: next(upcoming))
    monkeypatch.setattr(_heap, "release_free_heap", lambda: calls.append(1))
    return calls


def test_trimmer_trims_once_resident_memory_grew_since_the_last_trim_or_the_least_since(monkeypatch):
    calls = scripted_resident(monkeypatch, [100,  # at the start
                                          110, 90,  # grew 10, then reused: the least is 90
                                          105,  # 15 above it: not yet
                                          106, 95,  # 16: trim, then it measures 95
                                          110,  # 15 above: not yet
                                          95])  # done: grew 0 since
    trimmer = _heap.HeapTrimmer(growth_bytes=16)
    for expected in (0, 0, 0, 1, 1):
        trimmer.layer_done()
        assert len(calls) == expected
    trimmer.done()
    assert len(calls) == 1


def test_trimmer_trims_at_the_end_if_resident_memory_grew(monkeypatch):
    calls = scripted_resident(monkeypatch, [100, 101])
    _heap.HeapTrimmer(growth_bytes=16).done()
    assert len(calls) == 1


@pytest.fixture
def trims(monkeypatch) -> list[int]:
    """release_free_heap's calls, where the resident memory grows at each look and a trim is
    due at each byte: one a layer and one at the end of each loop."""
    monkeypatch.setattr(_heap, "TRIM_AFTER_GROWTH_BYTES", 1)
    return scripted_resident(monkeypatch, list(range(10**4)))


def mlp(layers: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(24, 24) for _ in range(layers)])


@pytest.mark.parametrize("config", [ek.Int8WeightOnlyConfig(), ek.Int8Config(), ek.TernaryConfig()], ids=str)
def test_quantize_and_dequantize_trim_as_each_layer_converts(trims, config):
    model = mlp()
    ek.quantize_(model, config, progress=False)
    assert len(trims) == 5 + 1
    ek.dequantize_(model)
    assert len(trims) == 2 * (5 + 1)


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.BinaryConfig()], ids=str)
def test_prepare_and_convert_trim_as_each_layer_converts(trims, config):
    model = mlp()
    ek.prepare(model, config)
    assert len(trims) == 5 + 1
    ek.convert(model)
    assert len(trims) == 2 * (5 + 1)


def test_quantize_on_load_trims_as_each_layer_converts(trims):
    float_model = mlp()
    with torch.device("meta"):
        model = mlp()
    on_load = QuantizeOnLoad(model, ek.Int8WeightOnlyConfig())
    for key, tensor in float_model.state_dict().items():
        on_load.take(key, tensor)
    assert len(trims) == 5
    on_load.finish()
    assert len(trims) == 5 + 1


def test_from_pretrained_trims_as_layers_convert_and_pack(trims, tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_hf_quantizer import llama, saved

    from effgen_kernels.hf import EffgenConfig
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        saved(llama(), tmp_path), quantization_config=EffgenConfig(ek.Int8WeightOnlyConfig()))
    converted = loaded.hf_quantizer.summary.converted
    assert len(converted) == 14 and len(trims) == 2 * (14 + 1)  # converted as they loaded, then packed
