"""effgen_kernels.hf: effgen's formats as a transformers quantization_config, quantizing in
from_pretrained and loading what save_pretrained wrote (transformers needed)."""

import json
import weakref

import pytest
import torch
from test_quant import assert_same_bits

import effgen_kernels as ek

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("effgen_kernels.hf")
EffgenConfig = hf.EffgenConfig
VOCAB = 96

CONFIGS = [ek.Int8WeightOnlyConfig(group_size=16), ek.Int8WeightOnlyConfig(), ek.Int8Config(),
           ek.BinaryConfig(group_size=16), ek.BinaryConfig(binary_activations=True), ek.TernaryConfig()]


def llama(tied: bool = False) -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def mixtral() -> transformers.PreTrainedModel:
    config = transformers.MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                        num_experts_per_tok=2)
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(config).eval()


def gpt2() -> transformers.PreTrainedModel:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                                     eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def saved(model: transformers.PreTrainedModel, path) -> str:
    model.save_pretrained(path)
    return str(path)


def logits(model: transformers.PreTrainedModel) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model(ids.to(model.device)).logits


def quantized_layers(model) -> dict[str, str]:
    return {name: type(module).__name__ for name, module in model.named_modules()
            if isinstance(module, ek.nn._quantized.QuantizedLayer)}


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype and torch.equal(state_a[key], state_b[key]), key


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_from_pretrained_quantizes_as_quantize_does(tmp_path, config):
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(llama(), tmp_path),
                                                               quantization_config=EffgenConfig(config))
    expected = llama()
    ek.quantize_(expected, config, filter_fn=lambda module, name: name != "lm_head")  # the LM head stays float
    assert len(quantized_layers(loaded)) == 14 and quantized_layers(loaded) == quantized_layers(expected)
    assert_same_state(loaded, expected)
    assert_same_bits(logits(loaded), logits(expected))
    assert loaded.hf_quantizer.summary.converted == list(quantized_layers(expected))


@pytest.mark.parametrize("make,config", [(mixtral, ek.Int8WeightOnlyConfig(group_size=16)), (gpt2, ek.Int8Config()),
                                         (gpt2, ek.TernaryConfig())], ids=str)
def test_experts_and_conv1d_layers_quantize_as_quantize_does(tmp_path, make, config):
    # GPT-2's weight init reads its c_proj layers' weights by name: int8 codes must survive it
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(make(), tmp_path),
                                                               quantization_config=EffgenConfig(config))
    expected = make()
    ek.quantize_(expected, config, filter_fn=lambda module, name: name != "lm_head")
    assert quantized_layers(loaded) == quantized_layers(expected)
    assert_same_state(loaded, expected)
    assert_same_bits(logits(loaded), logits(expected))


def test_each_layer_quantizes_as_its_tensors_load_not_after_the_whole_model(tmp_path, monkeypatch):
    float_layers_at_each_conversion, converted_still_alive, converted = [], [], []
    convert = hf.QuantizeOnLoad._convert

    def counting(self, layer):
        float_layers_at_each_conversion.append(sum(
            type(module) is torch.nn.Linear and not module.weight.is_meta and name != "lm_head"
            for name, module in self.model.named_modules()))
        converted_still_alive.append(sum(ref() is not None for ref in converted))  # held anywhere
        converted.append(weakref.ref(layer.module))
        convert(self, layer)

    monkeypatch.setattr(hf.QuantizeOnLoad, "_convert", counting)
    transformers.AutoModelForCausalLM.from_pretrained(saved(llama(), tmp_path),
                                                      quantization_config=EffgenConfig(ek.Int8Config()))
    assert float_layers_at_each_conversion == [1] * 14  # the layer converting, no float one before it
    assert converted_still_alive == [0] * 14  # each float layer freed once converted


def test_a_layer_the_checkpoint_lacks_is_quantized_after_the_load_and_one_with_nan_stays_float(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model = llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[1, 2] = float("nan")
    path = saved(model, tmp_path)
    state = safetensors.load_file(f"{path}/model.safetensors")
    del state["model.layers.1.self_attn.q_proj.weight"]  # the model initializes it
    safetensors.save_file(state, f"{path}/model.safetensors", metadata={"format": "pt"})
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        path, quantization_config=EffgenConfig(ek.Int8WeightOnlyConfig()))
    summary = loaded.hf_quantizer.summary
    assert summary.converted == list(quantized_layers(loaded)) and len(summary.converted) == 13
    assert "model.layers.1.self_attn.q_proj" in summary.converted
    assert summary.skipped == {"model.layers.0.mlp.up_proj": "weight contains NaN or Inf"}
    up = loaded.model.layers[0].mlp.up_proj
    assert type(up) is torch.nn.Linear
    assert torch.equal(up.weight.nan_to_num(), model.model.layers[0].mlp.up_proj.weight.nan_to_num())


@pytest.mark.parametrize("make,config", [(llama, ek.Int8WeightOnlyConfig(group_size=16)), (llama, ek.Int8Config()),
                                         (mixtral, ek.TernaryConfig()), (gpt2, ek.Int8WeightOnlyConfig())], ids=str)
def test_dequantize_makes_a_float_model_that_saves_and_loads_as_one(tmp_path, make, config):
    quantized = transformers.AutoModelForCausalLM.from_pretrained(saved(make(), tmp_path / "float"),
                                                                  quantization_config=EffgenConfig(config))
    expected = make()
    ek.quantize_(expected, config, filter_fn=lambda module, name: name != "lm_head")
    ek.dequantize_(expected)  # GPT-2's layers as nn.Linear: dequantize() makes them Conv1D again
    dequantized = quantized.dequantize()
    assert not quantized_layers(dequantized) and not dequantized.is_quantized
    assert "quantization_config" not in dequantized.config.to_dict()
    assert_same_bits(logits(dequantized), logits(expected))
    if not isinstance(config, ek.Int8Config):  # W8A8 also quantized the activations
        torch.testing.assert_close(logits(dequantized), logits(quantized), rtol=1e-4, atol=1e-4)
    float_types = {name: type(module) for name, module in make().named_modules()}
    assert {name: type(module) for name, module in dequantized.named_modules()} == float_types
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(dequantized, tmp_path / "dequantized"))
    assert_same_state(loaded, dequantized)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_a_saved_quantized_model_loads_bit_for_bit(tmp_path, config):
    quantized = transformers.AutoModelForCausalLM.from_pretrained(saved(llama(), tmp_path / "float"),
                                                                  quantization_config=EffgenConfig(config))
    path = saved(quantized, tmp_path / "quantized")
    with open(f"{path}/config.json") as f:
        assert json.load(f)["quantization_config"]["quant_method"] == "effgen"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path)
    assert quantized_layers(loaded) == quantized_layers(quantized)
    assert_same_state(loaded, quantized)
    assert_same_bits(logits(loaded), logits(quantized))
    summary = loaded.hf_quantizer.summary
    assert summary.converted == list(quantized_layers(quantized)) and summary.skipped == {
        "lm_head": "the checkpoint holds it in float"}
    assert summary.model_bytes_after == ek.model_bytes(loaded) < summary.model_bytes_before


@pytest.mark.parametrize("config", CONFIGS[:1] + CONFIGS[2:], ids=str)
def test_a_bfloat16_model_keeps_float32_scales_through_save_and_load(tmp_path, config):
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        saved(llama(), tmp_path / "float"), quantization_config=EffgenConfig(config), dtype=torch.bfloat16)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(quantized, tmp_path / "quantized"),
                                                               dtype=torch.bfloat16)
    for model in (quantized, loaded):
        layer = model.model.layers[0].mlp.up_proj
        scales = {key: t.dtype for key, t in layer.named_buffers() if key in layer._float32_buffers}
        assert scales and set(scales.values()) == {torch.float32}
    assert logits(quantized).dtype == torch.bfloat16
    assert_same_state(loaded, quantized)
    assert_same_bits(logits(loaded), logits(quantized))


@pytest.mark.parametrize("make,config,expected", [
    # experts saved under Mixtral's older names ("block_sparse_moe"), renamed as they load
    (mixtral, ek.Int8WeightOnlyConfig(group_size=16), 8 + 2 * 2 * 4),
    # GPT-2's Conv1D layers, whose weight init transformers runs on layers it knows by name
    (gpt2, ek.TernaryConfig(), 8),
])
def test_experts_and_conv1d_layers_load_bit_for_bit(tmp_path, make, config, expected):
    quantized = transformers.AutoModelForCausalLM.from_pretrained(saved(make(), tmp_path / "float"),
                                                                  quantization_config=EffgenConfig(config))
    assert len(quantized_layers(quantized)) == expected
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(quantized, tmp_path / "quantized"))
    assert quantized_layers(loaded) == quantized_layers(quantized)
    assert_same_state(loaded, quantized)
    assert_same_bits(logits(loaded), logits(quantized))


@pytest.mark.parametrize("tied", [False, True])
def test_a_tied_lm_head_stays_float_whatever_the_skip_list(tmp_path, tied):
    config = EffgenConfig(ek.Int8Config(), modules_to_not_convert=["mlp.down_proj"])
    quantized = transformers.AutoModelForCausalLM.from_pretrained(saved(llama(tied), tmp_path / "float"),
                                                                  quantization_config=config)
    layers = quantized_layers(quantized)
    assert ("lm_head" in layers) is not tied and not any(name.endswith("down_proj") for name in layers)
    assert len(layers) == 12 + (not tied)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(quantized, tmp_path / "quantized"))
    assert_same_bits(logits(loaded), logits(quantized))


def test_a_smoothquant_model_saved_by_hand_loads_its_smoothing(tmp_path):
    model = llama()
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(5))
    absmax = ek.calibrate_activations(model, [ids])
    ek.quantize_(model, ek.Int8Config(activation_absmax=absmax), filter_fn=lambda module, name: name != "lm_head")
    hf.set_quantization_config(model, ek.Int8Config())  # what from_pretrained reads it by
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(model, tmp_path))
    assert loaded.model.layers[0].mlp.up_proj.input_smoothing is not None
    assert_same_state(loaded, model)
    assert_same_bits(logits(loaded), logits(model))


@pytest.mark.parametrize("config", [ek.TernaryConfig(), ek.Int8WeightOnlyConfig(group_size=16)], ids=str)
def test_a_model_quantized_by_hand_with_its_tied_head_saves_and_loads(tmp_path, config):
    model = llama(tied=True)
    assert "lm_head" in ek.quantize_(model, config).converted  # quantize_ converts the head too
    # ... which then shares nothing with the embeddings: the reload must not tie them again
    hf.set_quantization_config(model, config)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(model, tmp_path))
    assert quantized_layers(loaded) == quantized_layers(model) and len(quantized_layers(loaded)) == 15
    assert_same_state(loaded, model)
    assert_same_bits(logits(loaded), logits(model))


def test_the_config_travels_as_a_dict():
    config = EffgenConfig(ek.BinaryConfig(binary_activations=True), modules_to_not_convert=["x"])
    assert config.to_dict() == {"quant_method": "effgen", "format": "binary", "modules_to_not_convert": ["x"],
                                "options": {"group_size": None, "binary_activations": True}}
    again = EffgenConfig.from_dict(config.to_dict())
    assert again.effgen_config() == ek.BinaryConfig(binary_activations=True)
    assert EffgenConfig("ternary", {"per_channel": False}).effgen_config() == ek.TernaryConfig(per_channel=False)


@pytest.mark.parametrize("args,error", [
    (("int4",), "format must be one of \\['int8', 'int8_weight_only', 'binary', 'ternary'\\], got 'int4'"),
    ((ek.Int8Config,), "format must be a config instance such as Int8Config\\(\\), got the class itself"),
    (("int8_weight_only", {"group_size": 0}), "group_size must be positive or None, got 0"),
    (("ternary", {"bits": 2}), "unexpected keyword argument 'bits'"),
    ((ek.Int8Config(activation_absmax={"x": torch.ones(4)}),), "SmoothQuant needs calibration on the loaded model"),
    ((ek.TernaryConfig(), {"per_channel": True}), "options come with a format's name"),
])
def test_a_bad_config_is_refused_where_it_is_made(args, error):
    with pytest.raises((ValueError, TypeError), match=error):
        EffgenConfig(*args)


def test_a_checkpoint_unlike_its_config_is_refused_by_name(tmp_path):
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        saved(llama(), tmp_path / "float"), quantization_config=EffgenConfig(ek.Int8WeightOnlyConfig(group_size=16)))
    path = saved(quantized, tmp_path / "quantized")
    with open(f"{path}/config.json") as f:
        config = json.load(f)
    config["quantization_config"]["options"]["group_size"] = 32
    with open(f"{path}/config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="model.layers.0.mlp.down_proj.group_size: the checkpoint's weights are "
                                         "scaled in groups of 16, the quantization_config says 32"):
        transformers.AutoModelForCausalLM.from_pretrained(path)


def test_a_checkpoint_lacking_a_quantized_tensor_is_refused_by_name(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        saved(llama(), tmp_path / "float"), quantization_config=EffgenConfig(ek.Int8Config()))
    path = saved(quantized, tmp_path / "quantized")
    state = safetensors.load_file(f"{path}/model.safetensors")
    del state["model.layers.1.self_attn.o_proj.weight_scale"]
    safetensors.save_file(state, f"{path}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="the checkpoint lacks \\['model.layers.1.self_attn.o_proj.weight_scale'\\]"):
        transformers.AutoModelForCausalLM.from_pretrained(path)


def test_disk_offload_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be offloaded to disk"):
        transformers.AutoModelForCausalLM.from_pretrained(
            saved(llama(), tmp_path), quantization_config=EffgenConfig(ek.Int8Config()),
            device_map={"": "disk"}, offload_folder=str(tmp_path / "offload"))


@pytest.mark.cuda
@pytest.mark.parametrize("config", [ek.Int8WeightOnlyConfig(group_size=16), ek.Int8Config(), ek.TernaryConfig()],
                         ids=str)
def test_cuda_from_pretrained_quantizes_and_loads_on_the_gpu(tmp_path, config):
    on_cpu = transformers.AutoModelForCausalLM.from_pretrained(saved(llama(), tmp_path / "float"),
                                                               quantization_config=EffgenConfig(config))
    on_gpu = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "float", device_map="cuda",
                                                               quantization_config=EffgenConfig(config))
    assert_same_state(on_gpu, on_cpu)  # same quantized weights whichever device quantized them
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved(on_gpu, tmp_path / "quantized"),
                                                               device_map="cuda")
    assert_same_state(loaded, on_gpu)
    assert_same_bits(logits(loaded), logits(on_gpu))


def test_a_checkpoint_loads_into_the_model_without_its_head_and_back(tmp_path):
    # from_pretrained maps the names across the base model's prefix ("model."), both ways
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        saved(llama(), tmp_path / "float"), quantization_config=EffgenConfig(ek.Int8WeightOnlyConfig(group_size=16)))
    base = transformers.AutoModel.from_pretrained(saved(quantized, tmp_path / "quantized"))
    assert quantized_layers(base) == {name.removeprefix("model."): kind
                                      for name, kind in quantized_layers(quantized).items()}
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_same_bits(base(ids).last_hidden_state, quantized.model(ids).last_hidden_state)
    with_head = transformers.AutoModelForCausalLM.from_pretrained(saved(base, tmp_path / "base"))
    assert quantized_layers(with_head) == quantized_layers(quantized)
