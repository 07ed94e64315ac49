"""The autoregressive transformer: causality, conditioning, KV-cache generation, and the top-k / top-p sampler."""

import math

import numpy as np
import pytest
import torch

from visionzoo.generative.gpt import GPT, sample_logits

TINY = dict(embed_dim=32, depth=2, num_heads=4)


def tiny_gpt(num_classes: int = 0, seq_len: int = 12, vocab_size: int = 11) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size, seq_len, num_classes, **TINY).eval()


def test_position_i_sees_only_the_start_and_the_tokens_before_i():
    model = tiny_gpt()
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert before.shape == (2, 12, 11)
    torch.testing.assert_close(after[:, :6], before[:, :6], rtol=0, atol=0)  # positions 0..5 cannot see token 5
    assert (after[:, 6:] - before[:, 6:]).abs().amax(-1).min() > 1e-4  # every later position does


def test_the_label_reaches_every_position_and_none_is_the_extra_start_token():
    model = tiny_gpt(num_classes=3)
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        zero, one = model(tokens, torch.tensor([0, 0])), model(tokens, torch.tensor([1, 1]))
        torch.testing.assert_close(model(tokens, None), model(tokens, torch.tensor([3, 3])))
    assert (zero - one).abs().amax(-1).min() > 1e-4
    with pytest.raises(ValueError, match="0..3"):
        model(tokens, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_gpt()(tokens, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="N <= 12"):
        model(torch.zeros(2, 13, dtype=torch.long))


def test_forward_layers_are_the_embedding_and_every_block_and_end_in_the_logits():
    model = tiny_gpt()
    tokens = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        layers = model.forward_layers(tokens)
        assert len(layers) == TINY["depth"] + 1 and all(layer.shape == (3, 12, 32) for layer in layers)
        torch.testing.assert_close(model.head(model.norm(layers[-1])), model(tokens))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_tokens_of_any_integer_dtype_are_read_as_generate_reads_them(dtype):
    """The check accepts every integer dtype (and generate casts), but forward handed uint8 and int16 tokens to the
    embedding, which raised a raw 'Expected tensor for argument #1 indices ... ByteTensor'."""
    model = tiny_gpt()
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens.to(dtype)), model(tokens), rtol=0, atol=0)
        for given, expected in zip(model.forward_layers(tokens.to(dtype)), model.forward_layers(tokens)):
            torch.testing.assert_close(given, expected, rtol=0, atol=0)


def full_recomputation(model: GPT, prefix: torch.Tensor, labels, generator, **sampler) -> torch.Tensor:
    """The reference sampler: run the whole sequence again for every new token."""
    tokens = prefix
    while tokens.shape[1] < model.seq_len:
        padded = torch.cat([tokens, torch.zeros(tokens.shape[0], 1, dtype=torch.long)], dim=1)
        with torch.no_grad():
            logits = model(padded, labels)[:, -1]
        tokens = torch.cat([tokens, sample_logits(logits, generator=generator, **sampler)[:, None]], dim=1)
    return tokens


@pytest.mark.parametrize("prefix_length, sampler", [(0, {}), (5, {"temperature": 0.8, "top_k": 4}),
                                                    (1, {"top_p": 0.7})])
def test_kv_cache_generation_equals_full_recomputation(prefix_length, sampler):
    model = tiny_gpt(num_classes=3)
    labels = torch.tensor([0, 2, 3, 1])
    prefix = torch.randint(0, 11, (4, prefix_length), generator=torch.Generator().manual_seed(3))
    cached = model.generate(prefix if prefix_length else 4, labels=labels,
                            generator=torch.Generator().manual_seed(7), **sampler)
    reference = full_recomputation(model, prefix, labels, torch.Generator().manual_seed(7), **sampler)
    assert cached.shape == (4, 12) and cached.dtype == torch.long
    assert torch.equal(cached, reference)
    assert torch.equal(cached[:, :prefix_length], prefix)
    again = model.generate(prefix if prefix_length else 4, labels=labels, generator=torch.Generator().manual_seed(7),
                           **sampler)
    assert torch.equal(again, cached)  # the generator alone decides


def test_generate_in_training_mode_is_the_seeded_eval_sampling_and_keeps_the_mode():
    """With dropout, generate in training mode used to drop activations with the global RNG: other tokens each call."""
    torch.manual_seed(0)
    model = GPT(11, 12, 3, drop=0.5, **TINY).eval()
    expected = model.generate(4, labels=[0, 1, 2, 3], generator=torch.Generator().manual_seed(5))
    model.train()
    for _ in range(2):
        tokens = model.generate(4, labels=[0, 1, 2, 3], generator=torch.Generator().manual_seed(5))
        assert torch.equal(tokens, expected)
    assert all(module.training for module in model.modules()) and torch.is_grad_enabled()


def test_generate_takes_any_integer_count_and_refuses_other_prefixes_by_name():
    """A numpy count used to fail with "'numpy.int64' object has no attribute 'to'", as a float or a list did."""
    model = tiny_gpt()
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(np.int64(2), generator=generator),
                       model.generate(2, generator=torch.Generator().manual_seed(0)))
    for prefix in (2.0, [[1, 2]], None, True):
        with pytest.raises(ValueError, match=r"count of samples >= 0 \(or a prefix Tensor\[B, P\]\)"):
            model.generate(prefix)


def test_generate_checks_its_lengths():
    model = tiny_gpt()
    assert model.generate(2, length=5, generator=torch.Generator().manual_seed(0)).shape == (2, 5)
    with pytest.raises(ValueError, match="P < length <= 12"):
        model.generate(torch.zeros(2, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="P < length <= 12"):
        model.generate(2, length=13)



def test_tokens_labels_and_counts_outside_their_range_are_clear_errors():
    model = tiny_gpt(num_classes=3)
    with pytest.raises(ValueError, match=r"prefix tokens must be Tensor\[2, 1\] in 0\.\.10, .* values -1\.\.4"):
        model.generate(torch.tensor([[4], [-1]]))  # -1 would have embedded token 10, silently
    with pytest.raises(ValueError, match=r"prefix tokens must be an integer tensor"):
        model.generate(torch.tensor([[4.0]]))
    with pytest.raises(ValueError, match=r"tokens must be Tensor\[1, 3\] in 0\.\.10, .* values 0\.\.11"):
        model(torch.tensor([[0, 1, 11]]))  # the last token is not read but is a target: out of the vocabulary
    with pytest.raises(ValueError, match=r"labels must be an integer tensor"):
        model.generate(2, labels=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels must be Tensor\[2\] in 0\.\.3 \(3: none\)"):
        model.generate(2, labels=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="count of samples >= 0"):
        model.generate(-1)
    assert model.generate(0, labels=torch.zeros(0, dtype=torch.long)).shape == (0, 12)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(2, length=4, labels=[1, 2], generator=generator),
                       model.generate(2, length=4, labels=torch.tensor([1, 2]),
                                      generator=torch.Generator().manual_seed(0)))


# Probabilities 0.30, 0.25, 0.20, 0.15, 0.10 in a shuffled order of token ids.
ORDER = [3, 0, 4, 1, 2]
PROBABILITIES = torch.tensor([0.25, 0.15, 0.10, 0.30, 0.20])


def drawn(count: int = 4000, **sampler) -> torch.Tensor:
    logits = PROBABILITIES.log().expand(count, -1)
    return sample_logits(logits, generator=torch.Generator().manual_seed(0), **sampler)


@pytest.mark.parametrize("sampler, kept", [
    ({}, ORDER),
    ({"top_k": 1}, ORDER[:1]),
    ({"top_k": 3}, ORDER[:3]),
    ({"top_p": 0.5}, ORDER[:2]),  # 0.30 + 0.25 reaches 0.5
    ({"top_p": 0.6}, ORDER[:3]),  # 0.55 does not reach 0.6
    ({"top_p": 0.1}, ORDER[:1]),  # never fewer than the best token
    ({"top_p": 0.8}, ORDER[:4]),  # 0.75 does not reach 0.8
    ({"top_k": 4, "top_p": 0.8}, ORDER[:3]),  # top-p after top-k: (0.30 + 0.25 + 0.20) / 0.90 reaches 0.8
    ({"top_p": 1.0}, ORDER),
])
def test_top_k_and_top_p_keep_exactly_the_right_tokens(sampler, kept):
    assert set(drawn(**sampler).tolist()) == set(kept)


def test_top_k_keeps_the_tokens_tied_with_the_kth():
    """top_k=2 over logits [1, 1, 1, 0] used to keep two of the three tied best tokens, picked by topk's order."""
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).expand(3000, -1)
    tokens = sample_logits(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1, 2}


def test_the_kept_tokens_keep_their_relative_odds_and_temperature_sharpens():
    tokens = drawn(top_k=2)
    share = (tokens == ORDER[0]).float().mean()
    assert float(share) == pytest.approx(0.30 / 0.55, abs=0.03)
    cold = drawn(temperature=0.05)
    assert (cold == ORDER[0]).float().mean() > 0.95
    hot = drawn(temperature=100.0)
    assert float((hot == ORDER[-1]).float().mean()) == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize("sampler, message", [({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k"),
                                              ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                                              ({"top_k": 2.5}, "top_k must be an integer"),
                                              ({"top_k": True}, "top_k must be an integer")])
def test_bad_sampler_settings_are_clear_errors(sampler, message):
    with pytest.raises(ValueError, match=message):
        sample_logits(torch.zeros(2, 5), **sampler)


def test_initial_loss_is_near_uniform():
    model = tiny_gpt()
    tokens = torch.randint(0, 11, (8, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    assert float(loss) == pytest.approx(math.log(11), abs=0.1)


@pytest.mark.parametrize("temperature", [1e-46, 1e-300, 5e-324])
def test_a_temperature_below_float32s_range_is_greedy_not_an_error(temperature):
    """--temperature 1e-300 ended in torch's "probability tensor contains either `inf`, `nan` or element < 0": the
    temperature became 0 in float32, and the best logit 0 / 0 = nan."""
    logits = torch.tensor([[5.0, 20.0, 3.0], [1.0, -2.0, 0.5], [2.0, 2.0, -1.0]])
    tokens = sample_logits(logits, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert tokens[:2].tolist() == [1, 0] and tokens[2].item() in (0, 1)


def test_a_tiny_temperature_is_greedy_not_nan():
    logits = torch.tensor([[5.0, 20.0, 3.0], [1.0, -2.0, 0.5]])
    tokens = sample_logits(logits, temperature=1e-38, generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"logits must be Tensor\[B, V\], got \(3,\)"):
        sample_logits(logits[0])


def test_logits_with_nan_or_infinity_are_refused_naming_them():
    """sample_logits of NaN logits, +inf ones or a row of nothing but -inf stopped in torch.multinomial's
    RuntimeError ("probability tensor contains either `inf`, `nan` or element < 0"); it is now a ValueError
    (NonFiniteOutputError) that says what the logits hold. -inf, a token ruled out, stays allowed."""
    from visionzoo.utils import NonFiniteOutputError

    generator = torch.Generator().manual_seed(0)
    inf = float("inf")
    for logits in ([[0.0, float("nan")]], [[inf, 0.0]], [[0.0, 1.0], [-inf, -inf]]):
        with pytest.raises(NonFiniteOutputError, match=r"logits must be finite or -inf \(a token ruled out\), with "
                                                      r"a finite one in every row; got NaN, \+inf or a row of -inf"):
            sample_logits(torch.tensor(logits), generator=generator)
    assert sample_logits(torch.tensor([[-inf, 0.0, -inf]]), generator=generator).tolist() == [1]


def test_a_seed_given_for_the_generator_is_refused_naming_the_argument():
    """generate(2, generator=0) failed with "AttributeError: 'int' object has no attribute 'device'" (Image GPT's and
    the code prior's generate and complete pass it on)."""
    with pytest.raises(ValueError, match=r"generator must be a torch.Generator or None, got 0"):
        tiny_gpt().generate(2, generator=0)
    with pytest.raises(ValueError, match=r"generator must be a torch.Generator or None, got 0"):
        sample_logits(torch.zeros(2, 3), generator=0)
