"""VQGAN's second stage: a GPT over a frozen tokenizer's code grid, rebuilt from the tokenizer's record."""

import pytest
import torch

from visionzoo.models import create_model

TOKENIZER = {"name": "vqvae_small", "args": {"in_chans": 1, "channels": 16, "res_channels": 8, "embed_dim": 8,
                                             "num_codes": 32}}
TINY = dict(embed_dim=32, depth=2, num_heads=2)


def test_the_prior_models_the_tokenizers_code_grid():
    torch.manual_seed(0)
    model = create_model("vqgan_transformer", tokenizer=TOKENIZER, img_size=16, num_classes=10, **TINY)
    assert model.grid_size == (4, 4) and model.gpt.seq_len == 16 and model.gpt.vocab_size == 32
    images = torch.rand(3, 1, 16, 16)
    tokens = model.tokens(images)
    assert tokens.shape == (3, 16) and torch.equal(tokens, model.tokenizer.encode(images).flatten(1))
    logits = model(tokens, torch.tensor([0, 5, 10]))
    assert logits.shape == (3, 16, 32)
    decoded = model.images_from_tokens(tokens)
    assert decoded.shape == (3, 1, 16, 16) and 0 <= decoded.min() and decoded.max() <= 1
    with pytest.raises(ValueError, match=r"Tensor\[B, 1, 16, 16\]"):
        model.tokens(torch.rand(3, 1, 32, 32))


def test_the_tokenizer_is_frozen_in_eval_mode_and_saved_with_the_prior():
    model = create_model("vqgan_transformer", tokenizer=TOKENIZER, img_size=16, **TINY)
    model.train()
    assert model.gpt.training and not model.tokenizer.training and not model.tokenizer.quantizer.training
    assert not any(p.requires_grad for p in model.tokenizer.parameters())
    assert all(p.requires_grad for p in model.gpt.parameters())
    state = model.state_dict()
    assert "tokenizer.quantizer.codebook" in state and "tokenizer.encoder.layers.0.weight" in state
    codebook = {k: v.clone() for k, v in state.items() if k.startswith("tokenizer.")}
    model(model.tokens(torch.rand(4, 1, 16, 16))).sum().backward()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in codebook.items())  # no EMA update in train mode
    rebuilt = create_model("vqgan_transformer", **model.model_args)
    rebuilt.load_state_dict(state)  # the record rebuilds the same architecture
    assert model.model_args["tokenizer"] == TOKENIZER


def test_the_codes_do_not_depend_on_the_callers_autocast():
    """Near-duplicate codes, as a trained ViT-VQGAN has, make bf16 encoding pick other codes; the prior encodes in
    float32 whatever the caller's precision."""
    torch.manual_seed(0)
    model = create_model("vqgan_transformer", tokenizer=TOKENIZER, img_size=16, **TINY)
    quantizer = model.tokenizer.quantizer
    images = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        vectors = model.tokenizer.encoder(images * 2 - 1).permute(0, 2, 3, 1).reshape(-1, quantizer.dim)
    picks = vectors[torch.randperm(len(vectors))[:16]]
    quantizer.codebook.copy_(torch.cat([picks, picks + 1e-3 * torch.randn_like(picks)]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = model.tokens(images)
        raw_bf16 = model.tokenizer.encode(images)
    in_fp32 = model.tokens(images)
    assert not torch.equal(raw_bf16.flatten(1), in_fp32)  # the tokenizer alone does flip codes under bf16
    assert torch.equal(in_bf16, in_fp32)


def test_a_missing_tokenizer_record_is_a_clear_error():
    with pytest.raises(ValueError, match="tokenizer="):
        create_model("vqgan_transformer")
    with pytest.raises(ValueError, match="unknown model 'vqvae_tiny'"):
        create_model("vqgan_transformer", tokenizer={"name": "vqvae_tiny"})


VQGAN_TOKENIZER = {"name": "vqgan", "args": {"in_chans": 1, "ch": 8, "ch_mult": [1, 2], "z_channels": 8,
                                             "embed_dim": 8, "num_codes": 32, "disc_width": 8}}


def test_a_vqgan_priors_tokenizer_leaves_out_its_discriminator_and_loads_files_that_hold_it(tmp_path):
    """The discriminator only trains the tokenizer: the prior neither builds nor saves it, and drops its weights
    from the tokenizer's checkpoint and from prior checkpoints written while it was kept."""
    from visionzoo.checkpoint import save_checkpoint
    from visionzoo.models._registry import load_checkpoint

    torch.manual_seed(0)
    tokenizer = create_model(VQGAN_TOKENIZER["name"], **VQGAN_TOKENIZER["args"])
    tokenizer_file = tmp_path / "tokenizer.safetensors"
    save_checkpoint(tokenizer_file, {f"model.{k}": v for k, v in tokenizer.state_dict().items()},
                    {"model": {"name": "vqgan", "args": VQGAN_TOKENIZER["args"]}})
    model = create_model("vqgan_transformer", tokenizer=VQGAN_TOKENIZER, img_size=16, **TINY)
    assert not hasattr(model.tokenizer, "discriminator")
    assert not any(".discriminator." in k for k in model.state_dict())
    kept = sum(p.numel() for n, p in tokenizer.named_parameters() if not n.startswith("discriminator."))
    assert sum(p.numel() for p in model.tokenizer.parameters()) == kept
    assert kept < sum(p.numel() for p in tokenizer.parameters())

    load_checkpoint(model.tokenizer, tokenizer_file)
    images = torch.rand(2, 1, 16, 16)
    assert torch.equal(model.tokens(images), tokenizer.eval().encode(images).flatten(1))

    old_state = {**model.state_dict(), **{f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}}
    assert any(k.startswith("tokenizer.discriminator.") for k in old_state)
    old_file = tmp_path / "prior.safetensors"
    save_checkpoint(old_file, {f"model.{k}": v for k, v in old_state.items()},
                    {"model": {"name": "vqgan_transformer", "args": model.model_args}})
    reloaded = create_model("vqgan_transformer", checkpoint=old_file)
    tokens = model.tokens(images)
    assert torch.equal(reloaded.tokens(images), tokens)
    assert torch.equal(reloaded(tokens), model(tokens))


def test_generate_decodes_sampled_codes_and_the_same_seed_gives_the_same_images():
    torch.manual_seed(0)
    prior = create_model("vqgan_transformer", tokenizer=TOKENIZER, img_size=16, num_classes=0, **TINY)
    images = prior.generate(2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, prior.generate(2, generator=torch.Generator().manual_seed(0)))
