"""A Hugging Face GenerationConfig read as pipeline_generate's options, so that a pipeline
decodes as ``model.generate(input_ids)`` decodes with the model's own generation_config
(a chat model's eos tokens, its sampling temperature and top-p, a repetition penalty)."""

from __future__ import annotations

# GenerationConfig fields that become pipeline_generate options of the same name
_FOLLOWED = ("eos_token_id", "pad_token_id", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
             "min_p", "num_beams", "length_penalty", "early_stopping", "num_return_sequences", "repetition_penalty",
             "no_repeat_ngram_size", "min_new_tokens")
# fields that do not change which tokens generate picks for a decoder-only model given
# max_new_tokens (max_length counts only where max_new_tokens is not given)
_WITHOUT_EFFECT = {"bos_token_id", "decoder_start_token_id", "max_length", "use_cache", "cache_implementation",
                   "cache_config", "max_cache_len", "compile_config", "disable_compile", "prefill_chunk_size",
                   "transformers_version", "_from_model_config"}


def generation_options(generation_config) -> dict:
    """pipeline_generate's keyword options from a transformers ``GenerationConfig`` (a
    model's ``generation_config``, a DecoderStage's, or ``GenerationConfig.from_pretrained``),
    with generate's defaults where it leaves a field unset (top_k 50 when sampling, as generate
    samples). ``max_new_tokens`` is among them only where the config sets it; generate's
    ``max_length`` is not followed (pass max_new_tokens). A config that asks for what
    pipeline_generate does not do (typical_p, min_length, bad_words_ids, scores in a dict
    ...) is refused, naming the fields, rather than decoded otherwise than generate would."""
    from transformers import GenerationConfig

    if not isinstance(generation_config, GenerationConfig):
        raise TypeError(f"generation_options: generation_config must be a transformers GenerationConfig (a Hugging "
                        f"Face model's or DecoderStage's), got {type(generation_config).__name__}")
    fields = generation_config.to_dict()
    defaults = generation_config._get_default_generation_params()
    known = GenerationConfig().to_dict()  # a model's custom entries are none of generate's
    # a field generate has no default for is off at None or False (output_attentions=False)
    unfollowed = sorted(name for name, value in fields.items()
                        if name in known and name not in _FOLLOWED and name not in _WITHOUT_EFFECT
                        and value is not None and value != defaults.get(name, False))
    if unfollowed:
        raise ValueError("generation_options: the generation config sets " + ", ".join(
            f"{name}={fields[name]!r}" for name in unfollowed) + ", which pipeline_generate does not follow")
    options = {name: fields[name] if fields.get(name) is not None else defaults[name] for name in _FOLLOWED
               if fields.get(name) is not None or name in defaults}
    options["top_k"] = options["top_k"] or None  # generate's 0: every token; pipeline_generate's None
    if options["top_p"] == 1.0:
        options["top_p"] = None
    return options
