"""transformers 5's fused mixture-of-experts blocks under quantize_: each expert's projections
become quantized layers and the block's experts dispatch runs them (transformers needed)."""

import copy
import io

import pytest
import torch
from conftest import load_script, random_input
from test_quant import assert_same_bits

import effgen_kernels as ek
from effgen_kernels.nn.experts import DOWN_LAYERS, UP_LAYERS, QuantizedExpertsConfig, fused_weights

transformers = pytest.importorskip("transformers")

HIDDEN, EXPERTS, TOP_K, TOKENS = 32, 4, 2, 11


def experts_block(kind: str) -> torch.nn.Module:
    """A block of each layout: Mixtral (gate and up concatenated, [out, in]), GPT-OSS
    (interleaved, transposed, biases, its own clamped gate), NemotronH (no gate), Ergo (no
    gate, transposed, a forward of its own around the dispatch: an RMSNorm per route)."""
    models = transformers.models
    if kind == "mixtral":
        block = models.mixtral.modeling_mixtral.MixtralExperts(
            transformers.MixtralConfig(hidden_size=HIDDEN, intermediate_size=48, num_local_experts=EXPERTS))
    elif kind == "gpt_oss":
        block = models.gpt_oss.modeling_gpt_oss.GptOssExperts(
            transformers.GptOssConfig(hidden_size=HIDDEN, intermediate_size=48, num_local_experts=EXPERTS))
    elif kind == "nemotron_h":
        block = models.nemotron_h.modeling_nemotron_h.NemotronHExperts(
            transformers.NemotronHConfig(hidden_size=HIDDEN, moe_intermediate_size=40, n_routed_experts=EXPERTS))
    else:
        block = models.ergo.modeling_ergo.ErgoExperts(
            transformers.ErgoConfig(hidden_size=HIDDEN, moe_intermediate_size=24, num_experts=EXPERTS))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            scale = 0.2 if parameter.dim() == 3 else 1.0
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale + (name.endswith("norm.weight")))
    return block.eval()


def routing(tokens: int = TOKENS, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """TOP_K distinct experts a token and their weights, as a router gives them."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(EXPERTS, generator=generator)[:TOP_K] for _ in range(tokens)])
    return index, torch.rand(tokens, TOP_K, generator=generator).softmax(dim=-1)


def dequantized_twin(block: torch.nn.Module, quantized: torch.nn.Module) -> torch.nn.Module:
    """The float block holding what the W8A16 layers of ``quantized`` hold (codes x scales),
    in the block's own layout: its own forward is the reference."""
    twin = copy.deepcopy(block)
    with torch.no_grad():
        for weight, layers in zip(fused_weights(twin), (UP_LAYERS, DOWN_LAYERS), strict=True):
            for expert, layer in enumerate(quantized._modules[layers]):
                dense = layer.weight.float() * layer.weight_scale[:, None]
                weight[expert] = dense.t() if twin.is_transposed else dense
        if twin.has_bias:
            for name, layers in ((f"{'gate_up' if twin.has_gate else 'up'}_proj_bias", UP_LAYERS),
                                 ("down_proj_bias", DOWN_LAYERS)):
                getattr(twin, name).copy_(torch.stack([layer.bias for layer in quantized._modules[layers]]))
    return twin


@pytest.mark.parametrize("kind", ["mixtral", "gpt_oss", "nemotron_h", "ergo"])
def test_fused_experts_run_their_quantized_layers_as_the_float_block_runs_its_weights(kind):
    block = experts_block(kind)
    model = torch.nn.ModuleDict({"experts": copy.deepcopy(block)})
    summary = ek.quantize_(model, ek.Int8WeightOnlyConfig())
    assert summary.converted == ["experts"] and not summary.skipped
    quantized = model["experts"]
    assert type(quantized) is type(block) and not any(p.dim() == 3 for p in quantized.parameters())
    assert len(quantized._modules[UP_LAYERS]) == len(quantized._modules[DOWN_LAYERS]) == EXPERTS
    x = random_input((TOKENS, HIDDEN), scale=1.0, seed=5)
    index, weights = routing()
    expected = dequantized_twin(block, quantized)(x, index, weights)
    torch.testing.assert_close(quantized(x, index, weights), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mixtral", "gpt_oss", "nemotron_h", "ergo"])
def test_dequantize_gives_a_block_its_3d_weights_back_as_the_twin_holds_them(kind):
    block = experts_block(kind)
    model = torch.nn.ModuleDict({"experts": copy.deepcopy(block)})
    ek.quantize_(model, ek.Int8WeightOnlyConfig())
    twin = dequantized_twin(block, model["experts"])
    summary = ek.dequantize_(model)
    assert summary.converted == ["experts"] and not summary.skipped
    restored = model["experts"]
    assert UP_LAYERS not in restored._modules and not isinstance(restored.config, QuantizedExpertsConfig)
    for (name, parameter), (twin_name, twin_parameter) in zip(restored.named_parameters(), twin.named_parameters(),
                                                             strict=True):
        assert name == twin_name and parameter.is_contiguous() and torch.equal(parameter, twin_parameter), name
    x = random_input((TOKENS, HIDDEN), scale=1.0, seed=5)
    index, weights = routing()
    assert_same_bits(restored(x, index, weights), twin(x, index, weights))


def mixtral(num_hidden_layers: int = 2):
    config = transformers.MixtralConfig(vocab_size=96, hidden_size=HIDDEN, intermediate_size=48,
                                        num_hidden_layers=num_hidden_layers, num_attention_heads=2,
                                        num_key_value_heads=1, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)
    torch.manual_seed(0)
    return config, transformers.MixtralForCausalLM(config).eval()


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.Int8WeightOnlyConfig(group_size=16), ek.BinaryConfig(),
                                    ek.TernaryConfig()])
def test_a_quantized_mixtral_checkpoint_loads_into_its_meta_skeleton(config):
    accelerate = pytest.importorskip("accelerate")
    model_config, model = mixtral()
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        float_logits = model(ids).logits
        summary = ek.quantize_(model, config)
        logits = model(ids).logits
    experts = [f"model.layers.{i}.mlp.experts" for i in range(2)]
    assert set(experts) <= set(summary.converted) and not summary.skipped
    assert summary.model_bytes_after < summary.model_bytes_before / 2  # the experts are most of it
    if isinstance(config, ek.Int8WeightOnlyConfig):
        assert (logits - float_logits).norm() / float_logits.norm() < 0.01
    with accelerate.init_empty_weights():
        skeleton = transformers.MixtralForCausalLM(model_config).eval()
    loaded = ek.load_quantized_(skeleton, model.state_dict(), config)
    assert loaded.converted == summary.converted
    with torch.no_grad():
        assert_same_bits(skeleton(ids).logits, logits)


def test_a_whole_quantized_mixtral_pickles():
    _, model = mixtral(num_hidden_layers=1)
    ek.quantize_(model, ek.Int8WeightOnlyConfig())
    ids = torch.randint(0, 96, (1, 5), generator=torch.Generator().manual_seed(7))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert isinstance(loaded.model.layers[0].mlp.experts.config, QuantizedExpertsConfig)
    with torch.no_grad():
        assert_same_bits(loaded(ids).logits, model(ids).logits)


def test_the_model_config_stays_as_it_was():
    _, model = mixtral(num_hidden_layers=1)
    before = model.config._experts_implementation
    ek.quantize_(model, ek.Int8WeightOnlyConfig())
    block_config = model.model.layers[0].mlp.experts.config
    assert model.config._experts_implementation == before and block_config.model_config is model.config
    assert block_config.hidden_size == HIDDEN  # read through


TRAINABLE = [ek.Int8Config(), ek.BinaryConfig(), ek.TernaryConfig()]


@pytest.mark.parametrize("kind", ["mixtral", "gpt_oss"])
@pytest.mark.parametrize("config", TRAINABLE, ids=str)
def test_prepared_experts_train_and_convert_to_what_quantize_makes(kind, config):
    block = experts_block(kind)
    model = torch.nn.ModuleDict({"experts": copy.deepcopy(block)})
    assert ek.prepare(model, config).converted == ["experts"]
    prepared = model["experts"]
    layers = [*prepared._modules[UP_LAYERS], *prepared._modules[DOWN_LAYERS]]
    assert len(layers) == 2 * EXPERTS and all(type(layer).__name__.endswith("TrainLinear") for layer in layers)
    x = random_input((TOKENS, HIDDEN), scale=1.0, seed=5)
    index, weights = routing()
    quantized = torch.nn.ModuleDict({"experts": copy.deepcopy(block)})
    ek.quantize_(quantized, config)
    with torch.no_grad():  # in eval, the trainable layers run the quantized kernels
        assert_same_bits(prepared(x, index, weights), quantized["experts"](x, index, weights))

    # training reaches every routed expert's latent weights, through the straight-through
    # estimator, and fits them to a target
    target = random_input((TOKENS, HIDDEN), scale=1.0, seed=6)
    prepared.train()
    optimizer = torch.optim.Adam(prepared.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = (prepared(x, index, weights) - target).square().mean()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    routed = set(index.flatten().tolist())
    assert all(layers[e].weight.grad is not None and layers[e].weight.grad.abs().sum() > 0 for e in routed)
    assert losses[-1] < 0.8 * losses[0]

    prepared.eval()
    with torch.no_grad():
        trained = prepared(x, index, weights)
    assert len(ek.convert(model)) == 2 * EXPERTS
    assert all(isinstance(layer, ek.nn._quantized.QuantizedLayer)
               for layer in [*prepared._modules[UP_LAYERS], *prepared._modules[DOWN_LAYERS]])
    with torch.no_grad():
        assert_same_bits(model["experts"](x, index, weights), trained)


def test_a_prepared_mixtral_trains_on_its_loss_and_converts_with_the_same_logits():
    _, model = mixtral(num_hidden_layers=1)
    summary = ek.prepare(model, ek.TernaryConfig(), filter_fn=lambda module, name: name != "lm_head")
    assert "model.layers.0.mlp.experts" in summary.converted and not summary.skipped
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(8))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        trained = model(ids).logits
    ek.convert(model)
    with torch.no_grad():
        assert_same_bits(model(ids).logits, trained)


def test_filter_fn_sees_a_fused_experts_block_and_can_leave_it_float():
    _, model = mixtral(num_hidden_layers=1)
    seen = []
    summary = ek.quantize_(model, ek.Int8WeightOnlyConfig(),
                           filter_fn=lambda module, name: seen.append(name) or "experts" not in name)
    assert "model.layers.0.mlp.experts" in seen and "model.layers.0.mlp.experts" not in summary.converted
    assert fused_weights(model.model.layers[0].mlp.experts)[0].dim() == 3


def test_the_moe_study_times_every_variant(tmp_path):
    # benchmarks/moe_experts_study.py, at a toy size: top_k distinct experts a token, weights
    # summing to 1, and every variant timed at every token count.
    study = load_script("benchmarks", "moe_experts_study")
    for index, weights in study.routings(5, 3, experts=8, top_k=2):
        assert index.shape == (3, 2) and all(len(set(row)) == 2 for row in index.tolist())
        torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    results = study.main(["--hidden", "32", "--intermediate", "16", "--experts", "4", "--blocks", "2",
                          "--tokens", "1", "3", "--reps", "3", "--json", str(tmp_path / "moe.json")])
    assert set(results) == {1, 3}
    assert all(set(medians) == {"fp32", "bf16", "W8A16", "W8A16 bf16"} and min(medians.values()) > 0
               for medians in results.values())
    assert (tmp_path / "moe.json").stat().st_size > 0
