"""quantize_ over every architecture transformers ships, each built small and random.

    python scripts/hf_architecture_sweep.py                     # causal LMs
    python scripts/hf_architecture_sweep.py --task seq2seq --json sweep.json
    python scripts/hf_architecture_sweep.py llama mamba t5      # some architectures only

For each architecture (transformers' auto mapping of the task): its default config made
small through the config's constructor (so that what it derives, layer types or rotary
sizes, follows), the float model's logits on random tokens, then quantize_ with W8A16, W8A8
and ternary weights. W8A16 is compared with the float model holding the very weights the
quantized layers hold (codes x scales): anything beyond fp32 rounding is a wrong layer, a
wrong layout or the model's code misusing a quantized layer. W8A8 and ternary report the
cosine similarity of their logits with the float model's (ternary is far off without
training). Where the float model generates, each quantized one generates 4 greedy tokens
(the one-row steps over its cache; W8A16's step logits against the twin's), and the
architecture's skeleton (weights on the meta device) must give the same logits, bit for
bit, after load_quantized_ of the quantized state_dict. Through transformers itself too:
the float model's save_pretrained goes through from_pretrained with EffgenConfig(config)
(effgen_kernels.hf), which quantizes each layer as it loads: it must convert what quantize_
converts after a float from_pretrained, to the same logits, that model's save_pretrained
must load back with the same logits, and the reload's dequantize() save and load as a float
model with the logits it has, bit for bit (architectures whose float model does not survive
save_pretrained and from_pretrained unchanged are listed, not failed). Architectures whose
float model cannot be built small this way are listed, not failed. Exit status 1 if any
architecture that runs in float fails quantized, its W8A16 logits (forward or generated)
are off, or a reload differs.
Nothing is downloaded: configs and weights are made here.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import signal
import sys
import tempfile
import warnings

import torch

import effgen_kernels as ek
from effgen_kernels.nn.experts import DOWN_LAYERS, UP_LAYERS, fused_weights

# Small sizes under the names configs use for them; only the names a config has are given.
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
             head_dim=16, max_position_embeddings=256, moe_intermediate_size=32, shared_expert_intermediate_size=64,
             num_experts=4, n_routed_experts=4, num_local_experts=4, num_experts_per_tok=2, kv_lora_rank=16,
             q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, d_model=64, n_embd=64, n_head=4,
             ffn_dim=128, d_ff=128, n_inner=128, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=128, decoder_ffn_dim=128, linear_num_key_heads=2, linear_num_value_heads=4,
             linear_key_head_dim=16, linear_value_head_dim=16, first_k_dense_replace=1, rotary_dim=8,
             partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers")
# Hybrid models place their layer kinds by index: 2 layers, else 4 or 8, until one builds.
DEPTHS = (2, 4, 8)
MAX_PARAMETERS = 80_000_000  # multimodal models keep full-size towers: too slow here, listed
SECONDS_PER_ARCHITECTURE = 150
W8A16_TOLERANCE = 1e-4  # max |error| / max |logit| against the dequantized float model
GENERATED_TOKENS = 4
CONFIGS = {"w8a16": ek.Int8WeightOnlyConfig(), "w8a8": ek.Int8Config(), "ternary": ek.TernaryConfig()}


class TooSlow(Exception):
    pass


def small_config(transformers, model_type: str, depth: int):
    """The architecture's default config with the sizes of SMALL it has, and ``depth`` layers."""
    default = transformers.AutoConfig.for_model(model_type)
    sizes = {**SMALL, **dict.fromkeys(LAYER_COUNTS, depth)}

    def known(config, name: str) -> bool:
        return hasattr(config, name) or name in getattr(config, "attribute_map", {})

    kwargs = {name: value for name, value in sizes.items() if known(default, name)}
    text = getattr(default, "text_config", None)
    if text is not None and not isinstance(text, dict):
        kwargs["text_config"] = {name: value for name, value in sizes.items() if known(text, name)}
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def float_model(transformers, auto_class, model_type: str, seq2seq: bool):
    """(model, its config, inputs, logits) of the first depth that builds and runs; raises
    the last error. The config is the one the model was made from: some models keep only a
    part of it as their .config (Emu3 its text config, which the auto class does not map)."""
    error = None
    for depth in DEPTHS:
        try:
            torch.manual_seed(0)
            config = small_config(transformers, model_type, depth)
            model = auto_class.from_config(config).eval()
            parameters = sum(p.numel() for p in model.parameters())
            if parameters > MAX_PARAMETERS:
                raise RuntimeError(f"{parameters / 1e6:.0f}M parameters even when made small")
            vocab = config.get_text_config().vocab_size
            ids = torch.randint(3, min(vocab, 200), (2, 12), generator=torch.Generator().manual_seed(1))
            inputs = {"input_ids": ids, **({"decoder_input_ids": ids} if seq2seq else {})}
            with torch.no_grad():
                return model, config, inputs, model(**inputs).logits
        except TooSlow:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to build the float model is reported, not fatal
            error = e
    raise error


def dequantized_twin(model: torch.nn.Module, quantized: torch.nn.Module) -> torch.nn.Module:
    """``model`` holding the weights the W8A16 layers of ``quantized`` hold (codes x scales):
    new parameters (a tied head must not change the embeddings), experts in their block's layout."""
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    with torch.no_grad():
        for name, layer in quantized.named_modules():
            if isinstance(layer, ek.nn.Int8WeightOnlyLinear) and name in modules:
                dense = layer.weight.float() * layer.weight_scale[:, None]
                conv1d = type(modules[name]).__name__ == "Conv1D"  # Hugging Face's, weight [in, out]
                modules[name].weight = torch.nn.Parameter(dense.t().contiguous() if conv1d else dense)
            elif UP_LAYERS in layer._modules and name in modules:
                block = modules[name]
                for weight, layers in zip(fused_weights(block), (UP_LAYERS, DOWN_LAYERS), strict=True):
                    for expert, expert_layer in enumerate(layer._modules[layers]):
                        dense = expert_layer.weight.float() * expert_layer.weight_scale[:, None]
                        weight[expert] = dense.t() if block.is_transposed else dense
    return twin


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|; 0 where they are equal, all zeros included
    (XLM generates logits of zeros)."""
    difference = (actual - expected).abs().max()
    return 0.0 if difference == 0 else (difference / expected.abs().max()).item()


def greedy(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """GENERATED_TOKENS greedy tokens after the inputs (one-row steps over the model's cache):
    the sequences and each step's logits."""
    out = model.generate(inputs["input_ids"], max_new_tokens=GENERATED_TOKENS, min_new_tokens=GENERATED_TOKENS,
                         do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences, list(out.logits)


def generation_error(quantized: tuple, expected: tuple) -> float:
    """The largest relative error of the quantized model's step logits against the float
    twin's, over the steps that saw the same tokens (a near tie may pick another token:
    the steps after it see other inputs)."""
    sequences, logits = quantized
    expected_sequences, expected_logits = expected
    new = expected_sequences.shape[1] - len(expected_logits)
    errors = []
    for step, (step_logits, step_expected) in enumerate(zip(logits, expected_logits, strict=True)):
        errors.append(relative_error(step_logits, step_expected))
        if not torch.equal(sequences[:, new + step], expected_sequences[:, new + step]):
            break
    return max(errors)


def reloaded_logits(auto_class, model_config, quantized: torch.nn.Module, config, inputs: dict):
    """The logits of the architecture's skeleton (weights on the meta device) after
    load_quantized_ of the quantized model's state_dict."""
    import accelerate

    with accelerate.init_empty_weights():
        skeleton = auto_class.from_config(copy.deepcopy(model_config)).eval()
    ek.load_quantized_(skeleton, quantized.state_dict(), config)
    return skeleton(**inputs).logits


def float_round_trip_problem(auto_class, model: torch.nn.Module, inputs: dict, logits: torch.Tensor,
                             directory: str) -> str | None:
    """Why the float model does not come back from save_pretrained and from_pretrained as it
    was (then the quantized round trip cannot be judged); None if it does."""
    try:
        model.save_pretrained(f"{directory}/float")
        loaded = auto_class.from_pretrained(f"{directory}/float").eval()
        return None if torch.equal(loaded(**inputs).logits, logits) else "other logits"
    except Exception as e:  # noqa: BLE001 - transformers' own round trip: not ours to check
        return f"{type(e).__name__}: {str(e)[:120]}"


def hf_round_trip(auto_class, name: str, config, inputs: dict, directory: str) -> dict:
    """from_pretrained of the float model's save_pretrained with EffgenConfig(config), then of
    that model's save_pretrained: layers converted, whether they are what quantize_ converts
    after a float from_pretrained (under the quantizer's skip rules) with its logits bit for
    bit, and whether the second load gives the first's logits bit for bit."""
    from effgen_kernels.hf import EffgenConfig, EffgenHfQuantizer

    quantized = auto_class.from_pretrained(f"{directory}/float", quantization_config=EffgenConfig(config)).eval()
    logits = quantized(**inputs).logits
    after_load = auto_class.from_pretrained(f"{directory}/float").eval()
    skip_rules = EffgenHfQuantizer(EffgenConfig(config), pre_quantized=False)._filter(after_load)
    converted_after_load = ek.quantize_(after_load, config, skip_rules, progress=False).converted
    quantized.save_pretrained(f"{directory}/{name}")
    loaded = auto_class.from_pretrained(f"{directory}/{name}").eval()
    converted = quantized.hf_quantizer.summary.converted
    reloaded_logits = loaded(**inputs).logits
    loaded.dequantize().save_pretrained(f"{directory}/{name}-dequantized")
    float_again = auto_class.from_pretrained(f"{directory}/{name}-dequantized").eval()
    return {"hf_converted": len(converted),
            "hf_as_quantize_": converted == converted_after_load and torch.equal(after_load(**inputs).logits, logits),
            "hf_reloaded_same": torch.equal(reloaded_logits, logits),
            "hf_dequantized_reloads": torch.equal(float_again(**inputs).logits, loaded(**inputs).logits)}


def check_architecture(transformers, auto_class, model_type: str, seq2seq: bool) -> dict:
    """One architecture's row: float failure, or per config what converted and how close:
    the forward's logits, a greedy generation's (where the float model generates) and a
    skeleton's after load_quantized_ of the quantized state_dict (which must be the same bits)."""
    try:
        model, model_config, inputs, logits = float_model(transformers, auto_class, model_type, seq2seq)
    except Exception as e:  # noqa: BLE001
        return {"float_fails": f"{type(e).__name__}: {str(e)[:120]}"}
    try:
        greedy(model, inputs)
        generates = True
    except Exception:  # noqa: BLE001 - the architecture's own generate: not ours to check
        generates = False
    row = {}
    directory = tempfile.TemporaryDirectory()
    with torch.no_grad():
        hf_problem = float_round_trip_problem(auto_class, model, inputs, logits, directory.name)
    if hf_problem is not None:
        row["hf_float_fails"] = hf_problem
    for name, config in CONFIGS.items():
        quantized = copy.deepcopy(model)
        try:
            summary = ek.quantize_(quantized, config, progress=False)
            with torch.no_grad():
                quantized_logits = quantized(**inputs).logits
                error = generated_error = generated_finite = None
                if generates:
                    generated = greedy(quantized, inputs)
                    generated_finite = all(torch.isfinite(step).all() for step in generated[1])
                if name == "w8a16":
                    twin = dequantized_twin(model, quantized)
                    error = relative_error(quantized_logits, twin(**inputs).logits)
                    if generates:
                        generated_error = generation_error(generated, greedy(twin, inputs))
                reloaded = reloaded_logits(auto_class, model_config, quantized, config, inputs)
                hf = {} if hf_problem else hf_round_trip(auto_class, name, config, inputs, directory.name)
            cosine = torch.nn.functional.cosine_similarity(quantized_logits.flatten(), logits.flatten(), dim=0)
            row[name] = {"converted": len(summary.converted), "skipped": len(summary.skipped),
                         "cosine": round(cosine.item(), 4), "w8a16_error": error,
                         "generation_error": generated_error, "generated_finite": generated_finite,
                         "reloaded_same": torch.equal(reloaded, quantized_logits), **hf}
        except TooSlow:
            raise
        except Exception as e:  # noqa: BLE001
            row[name] = {"fails": f"{type(e).__name__}: {str(e)[:160]}"}
    directory.cleanup()
    return row


def row_problem(row: dict) -> str | None:
    """Why a row fails the sweep; None if it passes (or its float model could not be built)."""
    for name, result in row.items():
        if name in ("float_fails", "hf_float_fails"):
            continue
        if "fails" in result:
            return f"{name} fails: {result['fails']}"
        if result["w8a16_error"] is not None and not result["w8a16_error"] <= W8A16_TOLERANCE:
            return f"w8a16 logits off by {result['w8a16_error']:.1e} of their largest"
        if result["generated_finite"] is False:
            return f"{name} generates non-finite logits"
        if result["generation_error"] is not None and not result["generation_error"] <= W8A16_TOLERANCE:
            return f"w8a16 generated logits off by {result['generation_error']:.1e} of their largest"
        if not result["reloaded_same"]:
            return f"{name}: the skeleton after load_quantized_ gives other logits"
        if result.get("hf_as_quantize_") is False:
            return f"{name}: from_pretrained quantizes otherwise than quantize_ after a float from_pretrained"
        if result.get("hf_dequantized_reloads") is False:
            return f"{name}: dequantize() and save_pretrained give a model that reloads with other logits"
        if result.get("hf_reloaded_same") is False:
            return f"{name}: from_pretrained of its save_pretrained gives other logits"
    return None


def describe(row: dict) -> str:
    if "float_fails" in row:
        return f"float model not built: {row['float_fails']}"
    parts = [] if "hf_float_fails" not in row else [f"float save/load round trip: {row['hf_float_fails']}"]
    for name, result in row.items():
        if name == "hf_float_fails":
            continue
        if "fails" in result:
            parts.append(f"{name} FAILS {result['fails']}")
        else:
            error = "" if result["w8a16_error"] is None else f" error {result['w8a16_error']:.1e}"
            generated = result["generation_error"]
            generation = "" if generated is None else f" generated {generated:.1e}"
            reload = "" if result["reloaded_same"] else " RELOAD DIFFERS"
            hf = ""
            if "hf_converted" in result:
                hf = f" from_pretrained {result['hf_converted']} converted"
                hf += "" if result["hf_as_quantize_"] else " UNLIKE QUANTIZE_ AFTER THE LOAD"
                hf += "" if result["hf_reloaded_same"] else " HF RELOAD DIFFERS"
                hf += "" if result["hf_dequantized_reloads"] else " DEQUANTIZED RELOAD DIFFERS"
            parts.append(f"{name} {result['converted']} converted {result['skipped']} skipped cos "
                         f"{result['cosine']:.4f}{error}{generation}{reload}{hf}")
    return " | ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("architectures", nargs="*", help="model types (default: every one of the task)")
    parser.add_argument("--task", choices=["causal", "seq2seq"], default="causal")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--memory-gib", type=float, default=14.0,
                        help="address-space limit: an architecture allocating past it fails, not the machine")
    args = parser.parse_args(argv)
    import transformers
    from transformers.models.auto import modeling_auto

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # each save and load draws one
    # ASan (`make sanitize` preloads it) maps terabytes of address space for its shadow
    # memory: under it no address-space limit can hold, and none is set.
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        limit = int(args.memory_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def too_slow(*_):
        raise TooSlow(f"over {SECONDS_PER_ARCHITECTURE} s")

    signal.signal(signal.SIGALRM, too_slow)
    seq2seq = args.task == "seq2seq"
    mapping = (modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES if seq2seq
               else modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    auto_class = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
    unknown = sorted(set(args.architectures) - set(mapping))
    if unknown:
        parser.error(f"not {args.task} architectures of transformers {transformers.__version__}: {unknown}")
    rows, problems = {}, {}
    for model_type in args.architectures or sorted(mapping):
        signal.alarm(SECONDS_PER_ARCHITECTURE)
        try:
            rows[model_type] = check_architecture(transformers, auto_class, model_type, seq2seq)
        except TooSlow as e:
            rows[model_type] = {"float_fails": str(e)}
        signal.alarm(0)
        print(f"{model_type}: {describe(rows[model_type])}", flush=True)
        if (problem := row_problem(rows[model_type])) is not None:
            problems[model_type] = problem
    built = sum("float_fails" not in row for row in rows.values())
    print(f"\ntransformers {transformers.__version__}: {len(rows)} architectures, {built} built small, "
          f"{built - len(problems)} of them run quantized as they should")
    for model_type, problem in problems.items():
        print(f"  {model_type}: {problem}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "rows": rows}, out,
                      indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
