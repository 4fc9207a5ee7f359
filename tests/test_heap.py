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


@pytest.mark.skipif(_heap._malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
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
    assert all(t.sum() == 8 for t in kept)  # what lives between the holes is untouched


@pytest.fixture
def trims(monkeypatch):
    """Counts release_free_heap's calls, with a trim due after every byte converted."""
    calls = []
    monkeypatch.setattr(_heap, "release_free_heap", lambda: calls.append(1))
    monkeypatch.setattr(_heap, "TRIM_EVERY_BYTES", 1)
    return calls


def test_trimmer_trims_every_so_many_bytes_and_at_the_end(trims):
    trimmer = _heap.HeapTrimmer(every_bytes=100)
    trimmer.converted(60)
    assert len(trims) == 0
    trimmer.converted(60)
    assert len(trims) == 1
    trimmer.done()  # nothing converted since
    assert len(trims) == 1
    trimmer.converted(10)
    trimmer.done()
    assert len(trims) == 2


def mlp(layers: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(24, 24) for _ in range(layers)])


@pytest.mark.parametrize("config", [ek.Int8WeightOnlyConfig(), ek.Int8Config(), ek.TernaryConfig()], ids=str)
def test_quantize_and_dequantize_trim_as_each_layer_converts(trims, config):
    model = mlp()
    ek.quantize_(model, config, progress=False)
    assert len(trims) == 5
    ek.dequantize_(model)
    assert len(trims) == 10


def test_quantize_on_load_trims_as_each_layer_converts(trims):
    float_model = mlp()
    with torch.device("meta"):
        model = mlp()
    on_load = QuantizeOnLoad(model, ek.Int8WeightOnlyConfig())
    for key, tensor in float_model.state_dict().items():
        on_load.take(key, tensor)
    assert len(trims) == 5
    on_load.finish()
    assert len(trims) == 5


def test_from_pretrained_trims_as_layers_convert_and_pack(trims, tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_hf_quantizer import llama, saved

    from effgen_kernels.hf import EffgenConfig
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        saved(llama(), tmp_path), quantization_config=EffgenConfig(ek.Int8WeightOnlyConfig()))
    converted = loaded.hf_quantizer.summary.converted
    assert len(converted) == 14 and len(trims) == 2 * 14  # converted as they loaded, then packed
