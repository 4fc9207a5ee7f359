"""Worker bodies for tests/test_tensor_parallel.py: each compares a tensor-parallel run with
the single-process model it must reproduce, and saves what it measured (gloo, spawned)."""

import copy
import datetime
import importlib.util
import inspect
import os

import torch
import torch.distributed as dist
from torch import nn

import effgen_kernels as ek
from effgen_kernels.bench.ddp_worker import finish_worker
from effgen_kernels.distributed import (
    ColumnParallelLinear,
    CompressionState,
    RowParallelLinear,
    compressed_allreduce_hook,
    full_state_dict,
    init_hybrid,
    load_full_state_dict,
    parallelize,
    reduce_from_tensor_parallel_region,
    replicated_parameters,
    scatter_to_tensor_parallel_region,
    sync_replicated_grads,
)
from effgen_kernels.gpt import GPT, Attention, GPTConfig, lm_batch, stdlib_source_bytes

QUANT_CONFIGS = {"int8": ek.Int8Config(), "int8_weight_only": ek.Int8WeightOnlyConfig(),
                 "int8_weight_only_g8": ek.Int8WeightOnlyConfig(group_size=8), "binary": ek.BinaryConfig(),
                 "ternary": ek.TernaryConfig(), "ternary_per_tensor": ek.TernaryConfig(per_channel=False)}
# ... and for the one row layer (in_features 16, converted under the name ""), SmoothQuant.
ROW_CONFIGS = {**QUANT_CONFIGS,
               "int8_smoothquant": ek.Int8Config(activation_absmax={"": torch.linspace(0.1, 8.0, 16)})}


def init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))


def small_gpt(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(context=16, dim=32, layers=2, heads=4).scaled(**changes))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def error_of(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def layers(rank, world, port, out):
    """Column and row layers, forward and backward, against nn.Linear."""
    init(rank, world, port)
    torch.manual_seed(0)
    column, row = nn.Linear(24, 16), nn.Linear(16, 12)
    x = torch.randn(3, 5, 24)
    upstream = torch.randn(3, 5, 12)
    results = {}

    x_full = x.clone().requires_grad_()
    (row(column(x_full)) * upstream).sum().backward()
    col_tp = ColumnParallelLinear.from_linear(column, gather_output=False)
    row_tp = RowParallelLinear.from_linear(row, input_is_parallel=True)
    x_tp = x.clone().requires_grad_()
    y = row_tp(col_tp(x_tp))
    (y * upstream).sum().backward()
    results["forward"] = max_diff(y, row(column(x)))
    results["input_grad"] = max_diff(x_tp.grad, x_full.grad)
    results["column_weight_grad"] = max_diff(col_tp.local.weight.grad, column.weight.grad.chunk(world, 0)[rank])
    results["column_bias_grad"] = max_diff(col_tp.local.bias.grad, column.bias.grad.chunk(world, 0)[rank])
    results["row_weight_grad"] = max_diff(row_tp.local.weight.grad, row.weight.grad.chunk(world, 1)[rank])
    results["row_bias_grad"] = max_diff(row_tp.bias.grad, row.bias.grad)

    results.update(gathered_and_scattered(column, row, x, upstream))
    compressed = RowParallelLinear.from_linear(row, compress_block_size=32)(col_tp(x))
    results["compressed_relative"] = ((compressed - row(column(x))).norm() / row(column(x)).norm()).item()

    for label, config in ROW_CONFIGS.items():  # one quantized row layer against the single-process one
        quantized_row = config.convert(row)
        x_full, x_tp = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected = quantized_row(column(x_full))
        got = RowParallelLinear.from_linear(quantized_row)(col_tp(x_tp))
        results[f"row/{label}"] = max_diff(got, expected) / expected.abs().max().item()
        (expected * upstream).sum().backward()  # frozen quantized weights: gradients reach the input
        (got * upstream).sum().backward()
        results[f"row_input_grad/{label}"] = max_diff(x_tp.grad, x_full.grad) / x_full.grad.abs().max().item()

    results.update(bf16_layers(column, row, x))
    results.update(fused_column(x, upstream, world, rank))
    results.update(conv1d_layers(x))
    results.update(replicated_gradients(rank))
    results.update(misconfigurations(row))
    shared = nn.Linear(24, 16)  # one module at two places: sharded once, swapped in at both
    model = nn.ModuleDict({"a": nn.ModuleDict({"q_proj": shared}), "b": nn.ModuleDict({"q_proj": shared})})
    results["shared_names"] = parallelize(model)
    results["shared_once"] = model["a"]["q_proj"] is model["b"]["q_proj"] and isinstance(model["a"]["q_proj"],
                                                                                           ColumnParallelLinear)
    full = full_state_dict(model)
    results["shared_full_state"] = {name: tuple(t.shape) for name, t in full.items()}
    load_full_state_dict(model, full)
    results["bad_shared"] = error_of(lambda: parallelize(nn.ModuleDict({"q_proj": shared, "o_proj": shared})))
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def bf16_layers(column: nn.Linear, row: nn.Linear, x: torch.Tensor) -> dict:
    """A bf16 int8 column -> row pair with the compressed all-reduce: outputs and every
    tensor of the gathered state keep the single-process layers' dtypes."""
    int8 = ek.Int8Config()
    column16, row16 = copy.deepcopy(column).bfloat16(), copy.deepcopy(row).bfloat16()
    x16 = x.bfloat16()
    singles = nn.ModuleDict({"q_proj": int8.convert(column16), "o_proj": int8.convert(row16)})
    expected = singles["o_proj"](singles["q_proj"](x16))
    parallel = nn.ModuleDict({"q_proj": ColumnParallelLinear.from_linear(column16, quant=int8),
                              "o_proj": RowParallelLinear.from_linear(row16, quant=int8, compress_block_size=32)})
    got = parallel["o_proj"](parallel["q_proj"](x16))
    single_state = singles.state_dict()
    return {"bf16_dtype": got.dtype, "bf16_relative": max_diff(got, expected) / expected.abs().max().item(),
            "bf16_state_dtypes": {k: (v.dtype, single_state[k].dtype) for k, v in full_state_dict(parallel).items()}}


def fused_column(x: torch.Tensor, upstream: torch.Tensor, world: int, rank: int) -> dict:
    """A fused layer of three unequal parts (q 16, k 8, v 8 outputs): each rank's output is
    its slice of every part; gathered, the whole layer's output, forward and backward; its
    full state dict is the layer's own."""
    torch.manual_seed(3)
    fused = nn.Linear(24, 32)
    sizes = (16, 8, 8)
    x_full, x_gather = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = fused(x_full)
    parts = [part.chunk(world, dim=-1)[rank] for part in expected.split(sizes, dim=-1)]
    local = ColumnParallelLinear.from_linear(fused, output_sizes=sizes)(x)
    gathered_layer = ColumnParallelLinear.from_linear(fused, output_sizes=sizes, gather_output=True)
    gathered = gathered_layer(x_gather)
    weights = torch.linspace(-1, 1, 32)  # a different weight for every output: any misplaced part shows
    (expected * weights).sum().backward()
    (gathered * weights).sum().backward()
    model = nn.ModuleDict({"qkv": ColumnParallelLinear.from_linear(fused, output_sizes=sizes)})
    full = full_state_dict(model)
    load_full_state_dict(model, full)
    return {"fused_local": max_diff(local, torch.cat(parts, dim=-1)), "fused_gather": max_diff(gathered, expected),
            "fused_gather_input_grad": max_diff(x_gather.grad, x_full.grad),
            "fused_state": max(max_diff(full[f"qkv.{k}"], v) for k, v in fused.state_dict().items()),
            "fused_reload": max_diff(model["qkv"](x), local),
            "fused_repr": repr(gathered_layer).splitlines()[1]}


def conv1d_layers(x: torch.Tensor) -> dict:
    """Hugging Face's Conv1D (weight stored [in, out]) as a column and a row layer, float
    and int8: the forward of the pair, and a full state dict stored as the Conv1D stores it.
    Nothing without transformers (the models extra)."""
    if importlib.util.find_spec("transformers") is None:
        return {}
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(4)
    column, row = Conv1D(16, 24), Conv1D(12, 16)
    for conv in (column, row):
        nn.init.normal_(conv.bias)
    expected = row(column(x))
    model = nn.ModuleDict({"c_fc": ColumnParallelLinear.from_linear(column),
                           "c_proj": RowParallelLinear.from_linear(row)})
    full = full_state_dict(model)
    reloaded = nn.ModuleDict({"c_fc": ColumnParallelLinear.from_linear(Conv1D(16, 24)),
                              "c_proj": RowParallelLinear.from_linear(Conv1D(12, 16))})
    load_full_state_dict(reloaded, full)
    singles = {"c_fc": column, "c_proj": row}
    int8 = nn.ModuleDict({"c_fc": ColumnParallelLinear.from_linear(column, quant=ek.Int8WeightOnlyConfig()),
                          "c_proj": RowParallelLinear.from_linear(row, quant=ek.Int8WeightOnlyConfig())})
    int8_expected = ek.Int8WeightOnlyConfig().convert(ek.quantize.as_linear(row))(
        ek.Int8WeightOnlyConfig().convert(ek.quantize.as_linear(column))(x))
    return {"conv1d": max_diff(model["c_proj"](model["c_fc"](x)), expected),
            "conv1d_state": max(max_diff(full[f"{name}.{k}"], v) for name, conv in singles.items()
                                for k, v in conv.state_dict().items()),
            "conv1d_state_shapes": {k: tuple(v.shape) for k, v in full.items()},
            "conv1d_reload": max_diff(reloaded["c_proj"](reloaded["c_fc"](x)), expected),
            "conv1d_int8": max_diff(int8["c_proj"](int8["c_fc"](x)), int8_expected)}


def replicated_gradients(rank: int) -> dict:
    """sync_replicated_grads averages the replicated trainable parameters' gradients over
    the group and leaves the shards' own gradients alone; a shard's shape on a 1-D mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    model = nn.ModuleDict({"q_proj": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
    parallelize(model)
    model["norm"].bias.requires_grad_(False)
    for p in model.parameters():
        p.grad = torch.full_like(p, float(rank + 1))
    sync_replicated_grads(model)
    names = {id(p): name for name, p in model.named_parameters()}
    one_d = nn.ModuleDict({"q_proj": nn.Linear(4, 4)})
    parallelize(one_d, init_device_mesh("cpu", (2,)))  # a 1-D mesh, its dimension unnamed: the whole mesh is tp
    return {"replicated": [names[id(p)] for p in replicated_parameters(model)],
            "grads_after_sync": {name: p.grad.unique().tolist() for name, p in model.named_parameters()},
            "one_d_mesh_shard": tuple(one_d["q_proj"].local.weight.shape)}


def gathered_and_scattered(column: nn.Linear, row: nn.Linear, x: torch.Tensor, upstream: torch.Tensor) -> dict:
    """A column layer that gathers its output and a row layer that splits its input, forward
    and backward (the gather's backward takes this rank's slice, the split's gathers), and a
    column layer made by its constructor, with both layers' descriptions."""
    results = {}
    x_full, x_gather, x_scatter = (x.clone().requires_grad_() for _ in range(3))
    hidden = column(x_full)
    (hidden[..., :12] * upstream).sum().backward()
    gathered = ColumnParallelLinear.from_linear(column, gather_output=True)(x_gather)
    (gathered[..., :12] * upstream).sum().backward()
    results["gather_output"] = max_diff(gathered, hidden)
    results["gather_output_input_grad"] = max_diff(x_gather.grad, x_full.grad)
    x_full.grad = None
    expected = row(column(x_full))
    (expected * upstream).sum().backward()
    scattered = RowParallelLinear.from_linear(row, input_is_parallel=False)(column(x_scatter))
    (scattered * upstream).sum().backward()
    results["row_scatters_input"] = max_diff(scattered, expected)
    results["row_scatters_input_grad"] = max_diff(x_scatter.grad, x_full.grad)
    built = ColumnParallelLinear(24, 16, bias=False, gather_output=True)
    results["built_column"] = (tuple(built.local.weight.shape), built.local.bias, tuple(built(x).shape))
    results["column_repr"] = repr(ColumnParallelLinear.from_linear(column))
    results["row_repr"] = repr(RowParallelLinear.from_linear(row, compress_block_size=32))
    return results


def misconfigurations(row: nn.Linear) -> dict:
    """What each misconfiguration raises (or "no error")."""
    from torch.distributed.device_mesh import init_device_mesh

    unnamed_mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "model"))
    return {
        "bad_out": error_of(lambda: ColumnParallelLinear(8, 15)),
        "bad_out_shard": error_of(lambda: ColumnParallelLinear.from_linear(nn.Linear(8, 15))),
        "bad_in": error_of(lambda: RowParallelLinear(15, 8)),
        "bad_packed": error_of(lambda: RowParallelLinear.from_linear(nn.Linear(24, 8), quant=ek.BinaryConfig())),
        "bad_group": error_of(lambda: RowParallelLinear.from_linear(nn.Linear(48, 8),
                                                                    quant=ek.Int8WeightOnlyConfig(group_size=16))),
        "bad_binary_activations": error_of(lambda: RowParallelLinear.from_linear(
            nn.Linear(32, 8), quant=ek.BinaryConfig(binary_activations=True))),
        "bad_compress": error_of(lambda: RowParallelLinear(16, 8, compress_block_size=0)),
        "bad_quant_twice": error_of(lambda: RowParallelLinear.from_linear(ek.Int8Config().convert(row),
                                                                          quant=ek.Int8Config())),
        "bad_quant_class": error_of(lambda: ColumnParallelLinear.from_linear(nn.Linear(8, 8), quant=ek.Int8Config)),
        "bad_module": error_of(lambda: ColumnParallelLinear.from_linear(
            nn.modules.linear.NonDynamicallyQuantizableLinear(8, 8))),
        "bad_scatter": error_of(lambda: scatter_to_tensor_parallel_region(torch.randn(2, 15))),
        "bad_row_input": error_of(lambda: RowParallelLinear.from_linear(row, quant=ek.Int8Config())(torch.randn(3, 7))),
        "bad_heads": error_of(lambda: parallelize(small_gpt(heads=1, dim=32))),
        "bad_local_heads": error_of(lambda: parallelize(nn.ModuleDict({"attn": Attention(32, 1)}))),
        "bad_style": error_of(lambda: parallelize(nn.Linear(4, 4), plan={"": "diagonal"})),
        "bad_fused_style": error_of(lambda: parallelize(nn.Linear(4, 4), plan={"": ("column", 1)})),
        "bad_parts": error_of(lambda: parallelize(nn.ModuleDict({"qkv": nn.Linear(4, 16)}),
                                                  plan={"qkv": ("column", 3)})),
        "bad_output_sum": error_of(lambda: ColumnParallelLinear.from_linear(nn.Linear(4, 16), output_sizes=(8, 4))),
        "bad_output_part": error_of(lambda: ColumnParallelLinear(4, 16, output_sizes=(10, 3, 3))),
        "bad_plan": error_of(lambda: parallelize(nn.ModuleDict({"fc": nn.Linear(4, 4)}))),
        "bad_mesh_names": error_of(lambda: parallelize(small_gpt(), unnamed_mesh)),
        "bad_mesh": error_of(lambda: init_hybrid(3, 2)),
    }


def compressed_reduce(rank, world, port, out):
    """The int8 activation all-reduce on each rank's own random partial sums."""
    init(rank, world, port)
    parts = [torch.randn(6, 40, generator=torch.Generator().manual_seed(r)) for r in range(world)]
    summed = reduce_from_tensor_parallel_region(parts[rank], compress_block_size=16)
    torch.save({"summed": summed, "exact": sum(parts)}, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def tied_pipeline_in_a_subgroup(rank, world, port, out):
    """The tied Llama pipelined over ranks 0 and 1 of three (rank 2 takes no part in it):
    PIPELINE_STEPS steps; each rank saves its stage's slice of the model."""
    from effgen_kernels.distributed import pipeline_schedule, pipeline_stage
    from effgen_kernels.distributed.pipeline import next_token_loss_fn

    init(rank, world, port)
    pipeline = dist.new_group([0, 1])  # every rank takes part in making it
    if rank < 2:
        model = pipeline_model("hf_llama_tied")
        stage = pipeline_stage(model, rank, 2, group=pipeline)
        schedule = pipeline_schedule(stage, MICROBATCHES, next_token_loss_fn)
        opt = torch.optim.SGD(stage.submod.parameters(), lr=pipeline_lr("hf_llama_tied"))
        losses = train_pipeline(schedule, [stage], opt, rank == 0, rank == 1)
        torch.save({"state": stages_state(model, [rank], 2), "losses": losses}, os.path.join(out, f"{rank}.pt"))
        del schedule, stage
    finish_worker()


def tiny_llama():
    """A two-layer Llama (SmolLM2's architecture: RMSNorm, rotary, gated MLP, grouped KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


# Each family's options beyond a tiny Llama's: a sliding window (5) shorter than the test's
# 12 tokens, so a stage that gave such layers the full causal mask would differ; Qwen2's
# window on its later layers only (mixed masks); a few experts for the mixtures.
DECODER_FAMILY_OPTIONS = {
    "llama": {},
    "mistral": {"sliding_window": 5},
    "mixtral": {"sliding_window": 5, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 32},
    "qwen3": {"head_dim": 8},
    "phi3": {"sliding_window": 5, "pad_token_id": 0},
    "gemma": {"head_dim": 8},
    "olmo2": {},
    "stablelm": {},
}
SLIDING_FAMILIES = {"mistral", "mixtral", "qwen2", "phi3"}


def tiny_decoder(model_type: str, attention: str = "sdpa", **changes):
    """A 3-layer causal LM of the family ``model_type`` with random weights (config ``changes``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    shape = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    config = AutoConfig.for_model(model_type, **{**shape, **DECODER_FAMILY_OPTIONS[model_type], **changes})
    config._attn_implementation = attention
    return AutoModelForCausalLM.from_config(config).eval()


GENERATION_MODELS = ("llama_tied", "qwen2", "qwen2_eager", "mixtral", "gemma", "llama_w8a16")
SAMPLING = ({"temperature": 1.0, "top_k": None, "top_p": None}, {"temperature": 0.7, "top_k": 20, "top_p": 0.9})


def generation_model(name: str, layers: int = 3) -> nn.Module:
    """A tiny model for pipeline_generate: "llama_tied" ties its head to the embeddings,
    Qwen2 has sliding-window layers (5 tokens of the 14), "_eager" attends through explicit
    masks, "llama_w8a16" is quantized. Initialized 25x wider than transformers' default
    (std 0.5), so that the next token depends on the earlier ones and their positions: at
    0.02 a tiny model's greedy choice follows the last token alone."""
    model_type, _, variant = name.partition("_")
    changes = {"initializer_range": 0.5, "tie_word_embeddings": variant == "tied", "num_hidden_layers": layers}
    model = tiny_decoder(model_type, "eager" if variant == "eager" else "sdpa", **changes)
    if variant == "w8a16":
        ek.quantize_(model, ek.Int8WeightOnlyConfig(), filter_fn=lambda module, name: name != "lm_head")
    model.generation_config.eos_token_id = None  # Mixtral's default (2) would end sequences early
    return model


def padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 4, 7 and 6 tokens padded on the left with 0: (input_ids, attention_mask)."""
    ids = torch.randint(1, 128, (3, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :3], mask[2, :1] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


def pipeline_generation(rank, world, port, out):
    """Greedy decoding through ``world`` DecoderStages against model.generate in one
    process: plain, stopping at an eos token the reference emits mid-way, prompts of three
    lengths padded on the left, and sampled; and pipeline_forward's logits of the padded
    prompts."""
    from effgen_kernels.distributed import gpt_stage, pipeline_forward, pipeline_generate

    init(rank, world, port)
    prompt = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(2))
    padded_prompt, mask = padded_prompts()
    results = {}
    for name in GENERATION_MODELS:
        model = generation_model(name)
        stage = gpt_stage(model, rank, world)
        expected = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
        eos = int(expected[0, 8])  # the third new token of the first sequence
        expected_eos = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=eos)
        results[name] = {"tokens": pipeline_generate(stage, prompt, 8), "expected": expected,
                         "eos_tokens": pipeline_generate(stage, prompt, 8, eos_token_id=eos),
                         "expected_eos": expected_eos,
                         # either of two ids ends a sequence (the second new token of the second)
                         "eos_list": (pipeline_generate(stage, prompt, 8, eos_token_id=[int(expected[1, 7]), eos]),
                                      model.generate(prompt, max_new_tokens=8, do_sample=False,
                                                     eos_token_id=[int(expected[1, 7]), eos],
                                                     pad_token_id=int(expected[1, 7]))),
                         "padded": (pipeline_generate(stage, padded_prompt, 8, attention_mask=mask),
                                    model.generate(padded_prompt, attention_mask=mask, max_new_tokens=8,
                                                   do_sample=False, pad_token_id=0)),
                         "forward": pipeline_forward(stage, padded_prompt, attention_mask=mask)}
        results[name]["beams"] = beam_searches(model, stage, padded_prompt, mask)
        results[name]["processed"] = processed_generations(model, stage, padded_prompt, mask)
        results[name]["configured"] = configured_generations(model, rank, world, padded_prompt, mask)
        if stage.last:  # the whole model in this process, on the same thread count
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                expected = model(padded_prompt, attention_mask=mask, position_ids=positions).logits
            results[name]["expected_forward"] = expected
        for options in SAMPLING:  # transformers draws from the global generator, the pipeline from its own
            torch.manual_seed(7)
            expected_sampled = model.generate(prompt, max_new_tokens=8, do_sample=True, pad_token_id=0,
                                              **{**options, "top_k": options["top_k"] or 0})
            sampled = pipeline_generate(stage, prompt, 8, do_sample=True, generator=torch.Generator().manual_seed(7),
                                        **options)
            results[name][f"sampled {options}"] = (sampled, expected_sampled)
    results["wrong_stage"] = error_of(lambda: pipeline_generate(gpt_stage(generation_model("qwen2"), world - 1 - rank,
                                                                          world), prompt, 2))
    pair = dist.new_group([0, 1])  # every rank takes part in making it
    if rank == 2:
        results["outside"] = error_of(lambda: pipeline_generate(stage, prompt, 2, group=pair))
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def beam_searches(model: nn.Module, stage, prompt: torch.Tensor, mask: torch.Tensor) -> list:
    """(pipeline_generate's, model.generate's) sequences of five beam searches of the padded
    prompts: plain; ending at a token the plain search emits, two sequences a prompt, with a
    length penalty; early stopping, ending at that token or another; and two sampled: plain
    and with the warpers, two sequences a prompt, ending at that token (top_k 1, where
    generate keeps the top two tokens of a beam: one more than the eos tokens)."""
    from effgen_kernels.distributed import pipeline_generate

    plain = {"num_beams": 3}
    found = model.generate(prompt, attention_mask=mask, max_new_tokens=8, pad_token_id=0, **plain)
    eos = int(found[0, prompt.shape[1] + 2])  # the third new token of the first prompt's best sequence
    ending = {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.5, "eos_token_id": eos}
    early = {**ending, "early_stopping": True, "eos_token_id": [eos, int(found[1, prompt.shape[1] + 1])]}
    sampled = {"num_beams": 3, "do_sample": True, "top_k": None}
    warped = {**sampled, "num_return_sequences": 2, "eos_token_id": eos, "temperature": 0.7, "top_k": 1, "top_p": 0.9}
    searches = []
    for options in (plain, ending, early, sampled, warped):
        ends = options.get("eos_token_id", 0)
        fill = ends[0] if isinstance(ends, list) else ends  # pipeline_generate fills with the (first) eos
        torch.manual_seed(7)  # transformers draws from the global generator, the pipeline from its own
        expected = model.generate(prompt, attention_mask=mask, max_new_tokens=8, pad_token_id=fill,
                                  **{**options, "top_k": options.get("top_k") or 0})
        searches.append((pipeline_generate(stage, prompt, 8, attention_mask=mask, **options,
                                           generator=torch.Generator().manual_seed(7)), expected))
    return searches


SAVED_MODELS = ("llama_tied", "mixtral", "qwen2")
SAVED_GENERATION = {"do_sample": True, "temperature": 0.6, "eos_token_id": [5, 9]}  # the models' generation_config


def save_stages(rank, world, port, out):
    """Each rank writes its DecoderStage's shard of a checkpoint (save_stage) of each of
    SAVED_MODELS with SAVED_GENERATION in its generation_config, into out/<name>; then a
    model whose last layer alone is quantized, which every rank refuses to write."""
    from effgen_kernels.distributed import gpt_stage, save_stage

    init(rank, world, port)
    for name in SAVED_MODELS:
        model = generation_model(name)
        model.generation_config.update(**SAVED_GENERATION)
        save_stage(gpt_stage(model, rank, world), os.path.join(out, name))
    model = generation_model("llama")
    ek.quantize_(model, ek.Int8WeightOnlyConfig(), filter_fn=lambda module, name: name.startswith("model.layers.2."))
    error = error_of(lambda: save_stage(gpt_stage(model, rank, world), os.path.join(out, "quantized")))
    torch.save({"quantized": error}, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def processed_generations(model: nn.Module, stage, prompt: torch.Tensor, mask: torch.Tensor) -> list:
    """(pipeline_generate's with a repetition penalty of 1.5 and no repeated bigram as logits
    processors, model.generate's with those options) sequences of the padded prompts: greedy,
    sampled and by beam search."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    from effgen_kernels.distributed import pipeline_generate

    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.5), NoRepeatNGramLogitsProcessor(2)])
    generations = []
    for decoding in ({}, {"do_sample": True, "temperature": 0.7, "top_k": 20}, {"num_beams": 3}):
        torch.manual_seed(7)  # transformers draws from the global generator, the pipeline from its own
        expected = model.generate(prompt, attention_mask=mask, max_new_tokens=8, pad_token_id=0, repetition_penalty=1.5,
                                  no_repeat_ngram_size=2, **decoding)
        generations.append((pipeline_generate(stage, prompt, 8, attention_mask=mask, logits_processor=processors,
                                              generator=torch.Generator().manual_seed(7), **decoding), expected))
    return generations


def configured_generations(model: nn.Module, rank: int, world: int, prompt: torch.Tensor, mask: torch.Tensor) -> list:
    """(pipeline_generate's with generation_options of its stage's generation_config,
    model.generate's with that config as the model's) sequences of the padded prompts:
    greedy, sampled (min-p too) and by beam search, each with a repetition penalty, and
    greedy with no eos before five new tokens; all with an eos token the greedy search emits
    and a pad token of its own. The prompts are padded with the token
    the greedy search picks first (for the first prompt), which the penalty must spare."""
    from transformers import GenerationConfig

    from effgen_kernels.distributed import generation_options, gpt_stage, pipeline_generate

    model_config = model.generation_config
    penalties = {"repetition_penalty": 2.0, "no_repeat_ngram_size": 2}
    first = model.generate(prompt, attention_mask=mask, max_new_tokens=4, pad_token_id=0, **penalties)
    prompt = prompt.masked_fill(mask == 0, int(first[0, prompt.shape[1]]))
    common = {"max_new_tokens": 8, "eos_token_id": int(first[0, prompt.shape[1] + 2]), "pad_token_id": 1}
    configs = (GenerationConfig(**common, **penalties),
               GenerationConfig(**common, do_sample=True, temperature=0.8, top_p=0.9, min_p=0.2,
                                repetition_penalty=1.3),
               GenerationConfig(**common, num_beams=3, num_return_sequences=2, length_penalty=0.8,
                                repetition_penalty=1.3),
               GenerationConfig(**common, **penalties, min_new_tokens=5))
    generations = []
    for config in configs:
        model.generation_config = config
        stage = gpt_stage(model, rank, world)  # with the model's generation_config
        torch.manual_seed(7)  # transformers draws from the global generator, the pipeline from its own
        expected = model.generate(prompt, attention_mask=mask)
        options = generation_options(stage.generation_config)
        generations.append((pipeline_generate(stage, prompt, attention_mask=mask,
                                              generator=torch.Generator().manual_seed(7), **options), expected))
    model.generation_config = model_config
    return generations


INTERLEAVED_MODELS = ("llama_tied", "qwen2", "llama_w8a16")


def interleaved_stages(rank, world, port, out):
    """Two stages a rank of four-layer models, placed as pipeline_stages places them (rank r
    holds stages r and r + 2 of 4): greedy decoding of padded prompts, pipeline_forward's
    logits, the four stages on each rank alone (a group of one), and the float models'
    checkpoints written by save_stage (out/<name>); then stages that make no pipeline,
    which every rank refuses."""
    from effgen_kernels.distributed import gpt_stage, pipeline_forward, pipeline_generate, save_stage

    init(rank, world, port)
    prompt, mask = padded_prompts()
    alone = [dist.new_group([r]) for r in range(world)][rank]  # every rank takes part in making each
    results = {}
    for name in INTERLEAVED_MODELS:
        model = generation_model(name, layers=4)
        stages = [gpt_stage(model, rank + k * world, 2 * world) for k in range(2)]
        every_stage = [gpt_stage(model, index, 4) for index in range(4)]
        results[name] = {"tokens": pipeline_generate(stages, prompt, 8, attention_mask=mask),
                         "forward": pipeline_forward(stages, prompt, attention_mask=mask),
                         "alone": pipeline_generate(every_stage, prompt, 8, group=alone, attention_mask=mask),
                         "beams": pipeline_generate(stages, prompt, 8, attention_mask=mask, num_beams=3)}
        if name != "llama_w8a16":
            save_stage(stages, os.path.join(out, name))
    model = generation_model("llama", layers=4)
    results["reversed"] = error_of(lambda: pipeline_forward([gpt_stage(model, rank + 2, 4), gpt_stage(model, rank, 4)],
                                                            prompt))
    # rank 0 one stage, rank 1 two
    results["uneven"] = error_of(lambda: pipeline_forward([gpt_stage(model, i, 4) for i in range(rank + 1)], prompt))
    # stages 0 and 3 of 4 as a pipeline of two
    results["gap"] = error_of(lambda: pipeline_forward(gpt_stage(model, 3 * rank, 4), prompt))
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def pipeline_of_tensor_parallel_stages(rank, world, port, out):
    """A ("pp", "tp") mesh of 2 x 2: each pipeline stage tensor-parallel over its pair of
    ranks. Greedy generation of a Qwen2-MoE (its experts expert-parallel in each pair), cut
    from the model and read from its checkpoint by load_stage (which is then sharded), and
    three GPipe steps' losses of a Qwen2 (the later ones after updates), whose trained
    stages save_stage then writes to out/trained."""
    from torch.distributed.device_mesh import init_device_mesh

    from effgen_kernels.distributed import (
        gpt_stage,
        load_stage,
        pipeline_generate,
        pipeline_schedule,
        pipeline_stage,
        save_stage,
    )
    from effgen_kernels.distributed.pipeline import next_token_loss_fn

    init(rank, world, port)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("pp", "tp"))
    stage_index, pipeline_group = mesh.get_local_rank("pp"), mesh.get_group("pp")
    model = generation_model("qwen2_moe")
    if rank == 0:
        model.save_pretrained(os.path.join(out, "checkpoint"))
    parallelize(model, mesh)
    prompt = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(2))
    results = {"tokens": pipeline_generate(gpt_stage(model, stage_index, 2), prompt, 8, group=pipeline_group)}
    dist.barrier()  # the checkpoint is written
    loaded = load_stage(os.path.join(out, "checkpoint"), stage_index, 2)
    parallelize(loaded, mesh)
    results["loaded_tokens"] = pipeline_generate(loaded, prompt, 8, group=pipeline_group)
    model = pipeline_model("hf_qwen2")
    parallelize(model, mesh)
    stage = pipeline_stage(model, stage_index, 2, group=pipeline_group)
    schedule = pipeline_schedule(stage, MICROBATCHES, next_token_loss_fn)
    opt = torch.optim.SGD(stage.submod.parameters(), lr=pipeline_lr("hf_qwen2"))
    results["losses"] = train_pipeline(schedule, [stage], opt, stage_index == 0, stage_index == 1, steps=3)
    save_stage(stage.submod, os.path.join(out, "trained"), group=pipeline_group)
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    del schedule, stage
    finish_worker()


def parallel_against_single_quantized(make, config, plan: dict, ids: torch.Tensor) -> tuple[float, bool]:
    """A model from ``make`` parallelized with ``quant=config`` against one quantized in one
    process on the planned layers: the largest logit difference, and whether its full state
    dict is the single-process model's bit for bit."""
    quantized, expected = make(), make()
    parallelize(quantized, quant=config)
    ek.quantize_(expected, config, filter_fn=lambda module, name: name.rsplit(".", 1)[-1] in plan)
    with torch.no_grad():
        difference = max_diff(quantized(ids).logits, expected(ids).logits)
    expected_state = expected.state_dict()
    return difference, all(torch.equal(v, expected_state[k]) for k, v in full_state_dict(quantized).items())


def llama(rank, world, port, out):
    """parallelize on a Hugging Face Llama: forward, input gradients and int8 quantization."""
    init(rank, world, port)
    reference, model = tiny_llama(), tiny_llama()
    results = {"sharded": parallelize(model)}
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    results["logits"] = max_diff(model(ids).logits, reference(ids).logits)
    for m in (reference, model):
        m(ids).logits.square().mean().backward()
    grads = {name: p.grad for name, p in reference.named_parameters()}
    results["embed_grad"] = max_diff(model.model.embed_tokens.weight.grad, grads["model.embed_tokens.weight"])
    results["int8_logits"], _ = parallel_against_single_quantized(tiny_llama, ek.Int8Config(),
                                                                  ek.distributed.TRANSFORMER_PLAN, ids)
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def transformer(rank, world, port, out):
    """A whole GPT: forward, backward, training steps and the full state dict; then every
    quantized configuration against the single-process quantized model."""
    init(rank, world, port)
    results = {}
    reference, model = small_gpt(), small_gpt()
    sharded = parallelize(model)
    results["sharded"] = len(sharded)
    results["local_heads"] = [block.self_attn.num_heads for block in model.layers]
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    results["logits"] = max_diff(model(ids).logits, reference(ids).logits)
    results["state_dict_roundtrip"] = max(max_diff(v, reference.state_dict()[k]) for k, v in
                                          full_state_dict(model).items())
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.5)
    opt_tp = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        batch = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(10 + step))
        for m, opt in ((reference, opt_ref), (model, opt_tp)):
            logits = m(batch[:, :-1]).logits
            loss = nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    trained = full_state_dict(model)
    results["after_training"] = max(max_diff(v, reference.state_dict()[k]) for k, v in trained.items())
    reloaded = small_gpt(seed=5)
    parallelize(reloaded)
    load_full_state_dict(reloaded, reference.state_dict())
    results["load_full"] = max_diff(reloaded(ids).logits, reference(ids).logits)

    def planned(module, name):
        return name.rsplit(".", 1)[-1] in ek.distributed.TRANSFORMER_PLAN

    for label, config in QUANT_CONFIGS.items():
        single = small_gpt()
        ek.quantize_(single, config, filter_fn=planned)
        parallel = small_gpt()
        parallelize(parallel, quant=config)
        with torch.no_grad():
            expected = single(ids).logits
            results[f"quant/{label}"] = max_diff(parallel(ids).logits, expected) / expected.abs().max().item()
        restored = full_state_dict(parallel)
        results[f"quant_state/{label}"] = all(torch.equal(v, single.state_dict()[k]) for k, v in restored.items())
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def tiny_gpt2():
    """A two-layer Hugging Face GPT-2 (Conv1D layers, fused q/k/v), random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # training is deterministic
    return GPT2LMHeadModel(config).eval()


def tiny_gpt_neox():
    """A two-layer GPT-NeoX (Pythia's architecture: q, k and v in one layer, grouped by head)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    return GPTNeoXForCausalLM(config).eval()


def tiny_phi3():
    """A two-layer Phi-3 (one qkv_proj whose split its attention reads from the config; one
    gate_up_proj), grouped KV heads."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0,
                        eos_token_id=0, pad_token_id=0)
    return Phi3ForCausalLM(config).eval()


def next_token_sgd_step(models, ids: torch.Tensor) -> None:
    """One SGD step (lr 0.5) of each Hugging Face model on next-token prediction over ids."""
    for m in models:
        m.train()
        loss = nn.functional.cross_entropy(m(ids[:, :-1]).logits.reshape(-1, 128), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.optim.SGD(m.parameters(), lr=0.5).step()
        m.eval()


def against_one_process(reference: nn.Module, model: nn.Module, fresh: nn.Module, ids: torch.Tensor) -> dict:
    """``model`` and ``fresh``, parallelized copies of the Hugging Face ``reference``, against
    it: logits; after an SGD step of both, the full state dict (its names, the largest
    difference); that state dict loaded into ``fresh`` (its logits)."""
    with torch.no_grad():
        result = {"logits": max_diff(model(ids).logits, reference(ids).logits)}
    next_token_sgd_step((reference, model), ids)
    full, expected = full_state_dict(model), reference.state_dict()
    result["same_names"] = set(full) == set(expected)
    result["trained"] = max(max_diff(v, expected[k]) for k, v in full.items())
    load_full_state_dict(fresh, expected)
    with torch.no_grad():
        result["loaded_logits"] = max_diff(fresh(ids).logits, reference(ids).logits)
    return result


def expert_parallel(rank, world, port, out):
    """parallelize's expert parallelism on Mixtral and Qwen2-MoE (4 experts, 2 a token):
    the share of experts a rank holds, logits, a training step (router and expert gradients),
    the full state dict both ways, a model quantized before it is parallelized, and errors."""
    from effgen_kernels.distributed import ExpertParallel

    init(rank, world, port)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    results = {}
    for model_type in ("mixtral", "qwen2_moe"):
        reference, model = tiny_decoder(model_type), tiny_decoder(model_type)
        parallelize(model)
        experts = model.model.layers[0].mlp.experts
        names = {id(p): name for name, p in model.named_parameters()}
        replicated = [names[id(p)] for p in replicated_parameters(model)]
        result = {"parallel": isinstance(experts, ExpertParallel), "first": experts.first,
                  "local_weights": tuple(experts.local.gate_up_proj.shape),
                  "replicated_experts": [name for name in replicated if ".experts." in name],
                  "replicated_router": "model.layers.0.mlp.gate.weight" in replicated}
        fresh = tiny_decoder(model_type)
        parallelize(fresh)
        result.update(against_one_process(reference, model, fresh, ids))
        quantized_first, expected_quantized = tiny_decoder(model_type), tiny_decoder(model_type)
        for m in (quantized_first, expected_quantized):
            ek.quantize_(m, ek.Int8WeightOnlyConfig(), filter_fn=lambda module, name: name.endswith("experts"))
        parallelize(quantized_first)
        with torch.no_grad():
            result["quantized_first_logits"] = max_diff(quantized_first(ids).logits, expected_quantized(ids).logits)
        expected_state = expected_quantized.state_dict()
        result["quantized_first_state"] = all(torch.equal(v, expected_state[k])
                                              for k, v in full_state_dict(quantized_first).items())
        block = expected_quantized.model.layers[0].mlp.experts
        result["quant_again"] = error_of(lambda block=block: ExpertParallel(block, quant=ek.Int8WeightOnlyConfig()))
        results[model_type] = result
    results["uneven"] = error_of(lambda: parallelize(tiny_decoder("mixtral", num_local_experts=3)))
    results["experts_style_on_a_linear"] = error_of(lambda: parallelize(tiny_decoder("llama"),
                                                                        plan={"q_proj": "experts"}))
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def expert_all_to_all(rank, world, port, out):
    """shard_experts on Mixtral and Qwen2-MoE, each rank with its own rows of the batch:
    logits, three DDP training steps against one process on the whole batch, W8A16
    experts, a block called with every token routed to rank 0's experts, and errors."""
    from effgen_kernels.distributed import ExpertParallel, shard_experts

    init(rank, world, port)
    ids = torch.randint(0, 128, (2 * world, 13), generator=torch.Generator().manual_seed(1))
    own = ids[2 * rank:2 * rank + 2]
    results = {}
    for model_type in ("mixtral", "qwen2_moe"):
        reference, model = tiny_decoder(model_type), tiny_decoder(model_type)
        sharded = shard_experts(model)
        result = {"sharded": sharded, "ignored": sorted(model._ddp_params_and_buffers_to_ignore)}
        with torch.no_grad():
            result["logits"] = max_diff(model(own).logits, reference(own).logits)
        ddp = nn.parallel.DistributedDataParallel(model)
        for m, batch in ((ddp, own), (reference, ids)):  # the mean loss over all rows, as DDP averages
            optimizer = torch.optim.SGD(m.parameters(), lr=0.5)
            m.train()
            for _ in range(3):
                optimizer.zero_grad()
                logits = m(batch[:, :-1]).logits
                nn.functional.cross_entropy(logits.reshape(-1, 128), batch[:, 1:].reshape(-1)).backward()
                optimizer.step()
        full, expected = full_state_dict(model), reference.state_dict()
        result["same_names"] = set(full) == set(expected)
        result["trained"] = max(max_diff(v, expected[k]) for k, v in full.items())
        result["moved"] = max_diff(expected["model.layers.0.mlp.experts.down_proj"],
                                   tiny_decoder(model_type).state_dict()["model.layers.0.mlp.experts.down_proj"])
        quantized, expected_quantized = tiny_decoder(model_type), tiny_decoder(model_type)
        shard_experts(quantized, quant=ek.Int8WeightOnlyConfig())
        ek.quantize_(expected_quantized, ek.Int8WeightOnlyConfig(),
                     filter_fn=lambda module, name: name.endswith("experts"))
        with torch.no_grad():
            result["quantized_logits"] = max_diff(quantized(own).logits, expected_quantized(own).logits)
        results[model_type] = result
        del ddp
    block = tiny_decoder("mixtral").model.layers[0].mlp.experts
    hidden = torch.randn(5, 32, generator=torch.Generator().manual_seed(rank))
    index, weights = torch.tensor([[0, 1]] * 5), torch.full((5, 2), 0.5)  # rank 1's experts get nothing
    with torch.no_grad():
        expected = block(hidden, index, weights)
        results["one_sided"] = max_diff(ExpertParallel(block, dispatch="all_to_all")(hidden, index, weights), expected)
    results["no_experts"] = error_of(lambda: shard_experts(tiny_decoder("llama")))
    results["bad_dispatch"] = error_of(lambda: ExpertParallel(tiny_decoder("mixtral").model.layers[0].mlp.experts,
                                                              dispatch="broadcast"))
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def stablelm_qk_layernorm(ids: torch.Tensor) -> dict:
    """A StableLM with a layer norm per q / k head (weights and biases drawn at random, so
    that a head given another's norm shows), parallelized against one process: logits, an
    SGD step, and the full state dict loaded into a fresh parallel model."""
    reference = tiny_decoder("stablelm", qk_layernorm=True)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "layernorm.norms." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    model, fresh = copy.deepcopy(reference), copy.deepcopy(reference)
    for parallel in (model, fresh):
        parallelize(parallel)
    attention = model.model.layers[0].self_attn
    return {"norms": (len(attention.q_layernorm.local.norms), len(attention.k_layernorm.local.norms)),
            **against_one_process(reference, model, fresh, ids)}


def decoder_families(rank, world, port, out):
    """parallelize with its default plan on a tiny model of every family pipeline stages know
    (Llama's kin): logits, an SGD step, the per-rank head counts, and W8A16 against the
    single-process quantized model; StableLM with its per-head q/k norms."""
    init(rank, world, port)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    results = {}
    for model_type in DECODER_FAMILY_OPTIONS:
        reference, model = tiny_decoder(model_type), tiny_decoder(model_type)
        sharded = parallelize(model)
        attention = model.model.layers[0].self_attn
        with torch.no_grad():
            logits = max_diff(model(ids).logits, reference(ids).logits)
        w8a16_logits, w8a16_state = parallel_against_single_quantized(
            lambda model_type=model_type: tiny_decoder(model_type), ek.Int8WeightOnlyConfig(),
            ek.distributed.default_plan(model), ids)
        next_token_sgd_step((reference, model), ids)
        expected = reference.state_dict()
        replicated = {id(p) for p in replicated_parameters(model)}
        results[model_type] = {"sharded": len(sharded), "logits": logits, "w8a16_logits": w8a16_logits,
                               "replicated_shards": [name for name, p in model.named_parameters()
                                                     if id(p) in replicated and ".local." in name],
                               "w8a16_state": w8a16_state,
                               "trained": max(max_diff(v, expected[k]) for k, v in full_state_dict(model).items()),
                               "heads": (getattr(attention, "num_heads", None),
                                         getattr(attention, "num_key_value_heads", None))}
    results["stablelm_qk_layernorm"] = stablelm_qk_layernorm(ids)
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def gpt2(rank, world, port, out):
    """parallelize on a Hugging Face GPT-2 with its default plan: forward, gradients, a
    training step, greedy generation through the KV cache, the full state dict, W8A16 and
    a fused c_attn whose parts do not match the attention's; a GPT-NeoX's forward; a
    Phi-3's, float and W8A16."""
    init(rank, world, port)
    reference, model = tiny_gpt2(), tiny_gpt2()
    results = {"sharded": parallelize(model), "split_size": model.transformer.h[0].attn.split_size}
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    results["logits"] = max_diff(model(ids).logits, reference(ids).logits)
    results["state"] = max(max_diff(v, reference.state_dict()[k]) for k, v in full_state_dict(model).items())
    next_token_sgd_step((reference, model), ids)
    results["trained"] = max(max_diff(v, reference.state_dict()[k]) for k, v in full_state_dict(model).items())
    prompt = ids[:1, :4]
    generated = [m.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0) for m in (model, reference)]
    results["generated_equal"] = torch.equal(*generated)
    results["w8a16_logits"], results["w8a16_state"] = parallel_against_single_quantized(
        tiny_gpt2, ek.Int8WeightOnlyConfig(), ek.distributed.GPT2_PLAN, ids)
    two_parts = tiny_gpt2()
    results["bad_split"] = error_of(lambda: parallelize(two_parts, plan={"c_attn": ("column", 2), "c_proj": "row"}))
    neox_reference, neox = tiny_gpt_neox(), tiny_gpt_neox()
    results["neox_sharded"] = parallelize(neox)
    results["neox_logits"] = max_diff(neox(ids).logits, neox_reference(ids).logits)
    phi3_reference, phi3 = tiny_phi3(), tiny_phi3()
    results["phi3_sharded"] = parallelize(phi3)
    results["phi3_logits"] = max_diff(phi3(ids).logits, phi3_reference(ids).logits)
    attention = phi3.model.layers[0].self_attn
    results["phi3_heads"] = (attention.config.num_attention_heads, attention.config.num_key_value_heads,
                             attention.num_key_value_heads, phi3.config.num_attention_heads,
                             attention.qkv_proj.local.out_features)
    prompt = ids[:1, :4]
    results["phi3_generated_equal"] = torch.equal(
        *[m.generate(prompt, max_new_tokens=8, do_sample=False) for m in (phi3, phi3_reference)])
    results["phi3_int8_logits"], results["phi3_int8_state"] = parallel_against_single_quantized(
        tiny_phi3, ek.Int8WeightOnlyConfig(), ek.distributed.PHI3_PLAN, ids)
    results["bad_qkv"] = error_of(lambda: parallelize(tiny_phi3(), plan={"gate_up_proj": "qkv"}))
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    finish_worker()


def text_batch(step: int) -> torch.Tensor:
    """[4, 16] windows of real text (the standard library's source), the same on every rank."""
    inputs, labels = lm_batch(stdlib_source_bytes(max_bytes=100_000)[0], step, 4, 15, seed=3)
    return torch.cat([inputs, labels[:, -1:]], dim=1)


def hybrid(rank, world, port, out, codec, steps):
    """dp=2 x tp=2: tensor parallel inside pairs, DDP (optionally with the compressed hook)
    across them, each dp rank on its own half of the batch."""
    init(rank, world, port)
    mesh = init_hybrid(2, 2)
    dp_rank = mesh.get_local_rank("dp")
    model = small_gpt()
    parallelize(model, mesh)
    ddp = nn.parallel.DistributedDataParallel(model, process_group=mesh.get_group("dp"))
    state = None
    if codec is not None:
        state = CompressionState(process_group=mesh.get_group("dp"), codec=codec, warmup_steps=1,
                                 min_compress_numel=0)
        ddp.register_comm_hook(state, compressed_allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    losses = []
    for step in range(steps):
        batch = text_batch(step)
        local = batch[2 * dp_rank:2 * dp_rank + 2]  # data sharded by dp rank
        logits = ddp(local[:, :-1]).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256), local[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        if codec is not None:
            sync_replicated_grads(model, mesh)
        opt.step()
        losses.append(loss.item())
    full = full_state_dict(model)
    torch.save({"state": full, "losses": losses, "bytes": state.last_step.bytes_sent if state else None},
               os.path.join(out, f"{rank}.pt"))
    del ddp, state
    finish_worker()


def hybrid_reference(steps):
    """The single-process run hybrid() must reproduce: the whole batch on one model."""
    model = small_gpt()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(steps):
        batch = text_batch(step)
        logits = model(batch[:, :-1]).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return copy.deepcopy(model.state_dict())


PIPELINE_STEPS, MICROBATCHES = 6, 2


def pipeline_model(mode: str) -> nn.Module:
    torch.manual_seed(0)
    if mode.startswith("hf_llama"):  # SmolLM2's architecture, 4 layers, on the text's bytes; "_tied" as SmolLM2
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                            tie_word_embeddings="_tied" in mode))
    if mode == "hf_qwen2":  # its last two layers attend through a 6-token window of the 15
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                            use_sliding_window=True, sliding_window=6, max_window_layers=2))
    model = small_gpt(layers=4)
    if mode == "kd_ternary":
        ek.prepare(model, ek.TernaryConfig(), filter_fn=lambda module, name: name != "lm_head")
    return model


def pipeline_lr(mode: str) -> float:
    # The Llama (std 0.02 init, untied 256-way head) diverges at 0.5 (its loss jumps from 3.4
    # to 6.1 by the fifth step), and there fp32 rounding differences grow past 1e-4.
    return 0.05 if mode.startswith("hf_") else 0.5


def pipeline_loss(mode: str):
    from effgen_kernels.distill import DistillationLoss
    from effgen_kernels.distributed.pipeline import distillation_loss_fn, next_token_loss_fn

    if mode == "plain" or mode.startswith("hf_"):
        return next_token_loss_fn
    return distillation_loss_fn(small_gpt(seed=7, layers=2), DistillationLoss(2.0, 0.5))


def summing_gpipe(stage, n_microbatches, loss_fn):
    """GPipe that sums the micro-batches' gradients, as torch 2.6's does (torch 2.7+ divides
    them by the count unless told scale_grads=False); takes no ``scale_grads`` itself."""
    from torch.distributed.pipelining import ScheduleGPipe

    if "scale_grads" in inspect.signature(ScheduleGPipe).parameters:
        return ScheduleGPipe(stage, n_microbatches, loss_fn=loss_fn, scale_grads=False)
    return ScheduleGPipe(stage, n_microbatches, loss_fn=loss_fn)


def pipeline_train(rank, world, port, out, mode, summing_schedule):
    """Two pipeline stages under pipeline_schedule's GPipe (built on ``summing_gpipe`` if
    ``summing_schedule``); saves each stage's slice of the model. "_loaded": each rank
    trains the stages load_stage reads from the model's checkpoint, not the model's own;
    "_interleaved": four stages, two a rank, under torch's interleaved 1F1B."""
    from torch.distributed.pipelining import ScheduleInterleaved1F1B

    from effgen_kernels.distributed.pipeline import (
        gpt_stage,
        load_stage,
        pipeline_schedule,
        pipeline_stage,
        pipeline_stages,
    )

    init(rank, world, port)
    model = pipeline_model(mode)
    interleaved = mode.endswith("_interleaved")
    stage_indices = [rank, rank + world] if interleaved else [rank]
    num_stages = world * len(stage_indices)
    parts = model
    if "_loaded" in mode:
        checkpoint = os.path.join(out, "checkpoint")
        if rank == 0:
            model.save_pretrained(checkpoint)
        dist.barrier()
        parts = [load_stage(checkpoint, index, num_stages) for index in stage_indices]
    if interleaved:
        stages, options = pipeline_stages(parts, rank, world, 2), {"schedule": ScheduleInterleaved1F1B}
    else:
        stages = [pipeline_stage(parts[0] if isinstance(parts, list) else parts, rank, world)]
        options = {"schedule": summing_gpipe} if summing_schedule else {}
    schedule = pipeline_schedule(stages if len(stages) > 1 else stages[0], MICROBATCHES, pipeline_loss(mode), **options)
    opt = torch.optim.SGD([p for stage in stages for p in stage.submod.parameters()], lr=pipeline_lr(mode))
    losses = train_pipeline(schedule, stages, opt, rank == 0, rank == world - 1)
    if "_loaded" in mode:  # into the model's slices, to be compared by the model's names
        for index, stage in zip(stage_indices, stages, strict=True):
            gpt_stage(model, index, num_stages).load_state_dict(stage.submod.state_dict())
    torch.save({"state": stages_state(model, stage_indices, num_stages), "losses": losses},
               os.path.join(out, f"{rank}.pt"))
    del schedule, stages
    finish_worker()


def train_pipeline(schedule, stages: list, opt, first: bool, last: bool, steps: int = PIPELINE_STEPS,
                   rows: slice = slice(None)) -> list[float]:
    """``steps`` steps of ``opt`` on the rank's pipeline ``stages`` under ``schedule``, on the
    ``rows`` of each text_batch (a data-parallel share): the first stage's rank feeds the
    tokens (torch 2.11 rejects strided stage inputs), the last's the targets; a tied LM
    head's two copies (first and last stage) get the same gradient. The last stage's rank
    gets each step's mean micro-batch loss (the others an empty list)."""
    from effgen_kernels.distributed import sync_tied_grads

    losses = []
    for step in range(steps):
        window, micro_losses = text_batch(step)[rows], []
        opt.zero_grad()
        tokens_in = (window[:, :-1].contiguous(),) if first else ()
        schedule.step(*tokens_in, **{"target": window, "losses": micro_losses} if last else {})
        if micro_losses:
            losses.append(torch.stack(micro_losses).mean().item())
        sync_tied_grads(stages)
        opt.step()
    return losses


def stages_state(model: nn.Module, stage_indices: list[int], num_stages: int) -> dict[str, torch.Tensor]:
    """The model's state-dict entries that its stages ``stage_indices`` hold (they share the
    model's tensors)."""
    from effgen_kernels.distributed import gpt_stage

    owned = {t.data_ptr() for index in stage_indices for t in gpt_stage(model, index, num_stages).state_dict().values()}
    return {k: v for k, v in model.state_dict().items() if v.data_ptr() in owned}


def pipeline_data_parallel(rank, world, port, out, codec, stages_per_rank):
    """dp=2 x pp=2 on a ("dp", "pp") mesh: two pipelines of the tied Llama, a stage (or two,
    under interleaved 1F1B) a rank, each stage replicated over its data-parallel pair in DDP
    (with the compressed hook of ``codec``, if given), each pipeline on its own half of
    every batch."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.pipelining import ScheduleInterleaved1F1B

    from effgen_kernels.distributed import pipeline_schedule, pipeline_stages
    from effgen_kernels.distributed.pipeline import next_token_loss_fn

    init(rank, world, port)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "pp"))
    dp_rank, pp_rank, dp_group = mesh.get_local_rank("dp"), mesh.get_local_rank("pp"), mesh.get_group("dp")
    model = pipeline_model("hf_llama_tied")
    stages = pipeline_stages(model, pp_rank, 2, stages_per_rank, group=mesh.get_group("pp"),
                             data_parallel_group=dp_group)
    states = []
    for stage in stages if codec is not None else []:  # a hook state a DDP module
        states.append(CompressionState(process_group=dp_group, codec=codec, warmup_steps=1, min_compress_numel=0))
        stage.submod.register_comm_hook(states[-1], compressed_allreduce_hook)
    options = {"schedule": ScheduleInterleaved1F1B} if stages_per_rank > 1 else {}
    schedule = pipeline_schedule(stages if stages_per_rank > 1 else stages[0], MICROBATCHES, next_token_loss_fn,
                                 **options)
    opt = torch.optim.SGD([p for stage in stages for p in stage.submod.parameters()], lr=pipeline_lr("hf_llama_tied"))
    half = slice(2 * dp_rank, 2 * dp_rank + 2)  # this pipeline's share of each batch
    losses = train_pipeline(schedule, stages, opt, pp_rank == 0, pp_rank == 1, rows=half)
    indices = [pp_rank + 2 * k for k in range(stages_per_rank)]
    torch.save({"state": stages_state(model, indices, 2 * stages_per_rank), "losses": losses,
                "compression": [state.last_step.compression_ratio for state in states]},
               os.path.join(out, f"{rank}.pt"))
    del schedule, stages, states
    finish_worker()


def three_dimensional_parallel(rank, world, port, out):
    """dp=2 x pp=2 x tp=2 on a ("dp", "pp", "tp") mesh of 8 ranks: two pipelines of the tied
    Llama, each of two stages tensor parallel over a pair, each stage in DDP over its
    data-parallel pair; the pipeline of dp index 0 writes the trained model (save_stage) to
    out/trained."""
    from torch.distributed.device_mesh import init_device_mesh

    from effgen_kernels.distributed import pipeline_schedule, pipeline_stage, save_stage
    from effgen_kernels.distributed.pipeline import next_token_loss_fn

    init(rank, world, port)
    mesh = init_device_mesh("cpu", (2, 2, 2), mesh_dim_names=("dp", "pp", "tp"))
    dp_rank, pp_rank = mesh.get_local_rank("dp"), mesh.get_local_rank("pp")
    model = pipeline_model("hf_llama_tied")
    parallelize(model, mesh)
    stage = pipeline_stage(model, pp_rank, 2, group=mesh.get_group("pp"), data_parallel_group=mesh.get_group("dp"))
    schedule = pipeline_schedule(stage, MICROBATCHES, next_token_loss_fn)
    opt = torch.optim.SGD(stage.submod.parameters(), lr=pipeline_lr("hf_llama_tied"))
    half = slice(2 * dp_rank, 2 * dp_rank + 2)  # this pipeline's share of each batch
    losses = train_pipeline(schedule, [stage], opt, pp_rank == 0, pp_rank == 1, rows=half)
    if dp_rank == 0:
        save_stage(stage.submod.module, os.path.join(out, "trained"), group=mesh.get_group("pp"))
    torch.save({"losses": losses}, os.path.join(out, f"{rank}.pt"))
    del schedule, stage
    finish_worker()


def first_batch_loss(mode: str, state=None) -> float:
    """Next-token loss on the first training batch of the initial model, or with ``state``."""
    from effgen_kernels.distributed.pipeline import next_token_loss_fn

    model = pipeline_model(mode)
    if state is not None:
        model.load_state_dict(state)
    window = text_batch(0)
    with torch.no_grad():
        return next_token_loss_fn(model(window[:, :-1]).logits, window).item()


def pipeline_reference(mode: str):
    """Single-process training on the whole batch with the same loss."""
    model, loss_fn = pipeline_model(mode), pipeline_loss(mode)
    opt = torch.optim.SGD(model.parameters(), lr=pipeline_lr(mode))
    losses = []
    for step in range(PIPELINE_STEPS):
        window = text_batch(step)
        loss = loss_fn(model(window[:, :-1]).logits, window)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.state_dict(), losses
