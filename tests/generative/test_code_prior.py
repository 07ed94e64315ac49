"""VQGAN's second stage: a GPT over a frozen tokenizer's code grid, rebuilt from the tokenizer's record."""

import pytest
import torch
from taming_reference import TamingVQModel

from served_file import served_file
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


# ------------------------------------------------------------------ taming-transformers' second stage
# A small taming Net2NetTransformer: a VQGAN of 16 px images (8×8 codes, attention at the 8-px level) and minGPT.
TAMING_FIRST_STAGE = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], resolution=16,
                          z_channels=16, embed_dim=8, num_codes=64)
TAMING_TOKENIZER = {"name": "vqgan", "args": {**TAMING_FIRST_STAGE, "ema_decay": None, "out_act": "clamp"}}
TAMING_GPT = dict(n_layer=2, n_head=4, n_embd=32)
OUR_GPT = dict(depth=2, num_heads=4, embed_dim=32)


@pytest.fixture
def mingpt(monkeypatch):
    """taming's minGPT module; it imports ``transformers.top_k_top_p_filtering``, which a stub stands in for."""
    import importlib
    import sys
    import types

    stub = types.ModuleType("transformers")
    stub.top_k_top_p_filtering = None
    monkeypatch.setitem(sys.modules, "transformers", stub)
    return importlib.import_module("taming.modules.transformer.mingpt")


class TamingNet2Net(torch.nn.Module):
    """taming's Net2NetTransformer without its Lightning shell: the same submodule names (a VQModel as
    ``first_stage_model``, minGPT as ``transformer``; Labelator and SOSProvider have no weights), so its state dict
    is the one a taming .ckpt holds."""

    def __init__(self, mingpt, block_size=64, **gpt):
        super().__init__()
        first = TamingVQModel(**TAMING_FIRST_STAGE)
        self.first_stage_model = first
        self.transformer = mingpt.GPT(TAMING_FIRST_STAGE["num_codes"], block_size, **{**TAMING_GPT, **gpt})
        with torch.no_grad():  # off their plain inits (codes near one point, zero positions, identity norms)
            first.quantize.embedding.weight.normal_()
            self.transformer.pos_emb.normal_(0, 0.5)
            for module in self.modules():
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0, 0.1)
        self.eval()

    def codes(self, images):
        """The first stage's codes of images in [0, 1], Tensor[B, h·w] (taming's encode_to_z)."""
        first = self.first_stage_model
        _, _, (_, _, indices) = first.quantize(first.quant_conv(first.encoder(images * 2 - 1)))
        return indices.reshape(images.shape[0], -1)

    def logits(self, conditioning, codes):
        """taming's forward: logits for the codes after the conditioning tokens Tensor[B, c_len]."""
        cz = torch.cat([conditioning, codes], dim=1)
        return self.transformer(cz[:, :-1])[0][:, conditioning.shape[1] - 1:]

    def greedy(self, conditioning, steps):
        """taming's sample(..., sample=False): the most likely code, step by step, Tensor[B, steps]."""
        x = conditioning
        for _ in range(steps):
            probs = self.transformer(x)[0][:, -1].softmax(-1)
            x = torch.cat([x, probs.topk(1, dim=-1).indices], dim=1)
        return x[:, conditioning.shape[1]:]


def save_taming_transformer(path, model: torch.nn.Module, **extra) -> None:
    """A Lightning .ckpt as taming writes it: the state dict with the training state beside it."""
    torch.save({"epoch": 7, "global_step": 4321, "pytorch-lightning_version": "1.0.8",
                "state_dict": {**model.state_dict(), **extra}, "optimizer_states": [], "lr_schedulers": []}, path)


def taming_prior(path, num_classes, **sizes):
    args = {"tokenizer": TAMING_TOKENIZER, "img_size": 16, "num_classes": num_classes, **OUR_GPT, **sizes}
    return create_model("vqgan_transformer", checkpoint=path, **args).eval()


@pytest.mark.parametrize("num_classes", [10, 0], ids=["class-conditional", "unconditional"])
def test_a_taming_transformer_gives_tamings_logits_and_greedy_codes(tmp_path, mingpt, num_classes):
    torch.manual_seed(0)
    reference = TamingNet2Net(mingpt)
    save_taming_transformer(tmp_path / "last.ckpt", reference)
    ours = taming_prior(tmp_path / "last.ckpt", num_classes)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 4, 9]) if num_classes else None
    # the class is taming's conditioning token; an unconditional model's is its sos token, 0
    conditioning = (labels if num_classes else torch.zeros(3, dtype=torch.long))[:, None]
    with torch.no_grad():
        codes = ours.tokens(images)
        assert torch.equal(codes, reference.codes(images)) and len(codes.unique()) > 5
        theirs = reference.logits(conditioning, codes)
        assert theirs.shape == (3, 64, 64)
        torch.testing.assert_close(ours(codes, labels), theirs, atol=1e-5, rtol=1e-5)
        greedy = ours.gpt.generate(3, labels=labels, top_k=1, generator=torch.Generator().manual_seed(0))
        assert torch.equal(greedy, reference.greedy(conditioning, 64))
    if num_classes:  # the "no class" start taming never trained: the mean of the class starts
        rows = ours.gpt.start_embed.weight
        torch.testing.assert_close(rows[num_classes], rows[:num_classes].mean(0))


def test_the_imagenet_cin_prior_has_tamings_sizes_and_downloads_its_file_once(tmp_path, mingpt, monkeypatch):
    from visionzoo.generative.code_prior import _TAMING_CIN
    from visionzoo.generative.gpt import GPT
    from visionzoo.models import get_model_entry

    # cin_transformer's minGPT (vocab 16384, block_size 256) against ours on the meta device (no memory)
    with torch.device("meta"):
        theirs = mingpt.GPT(16384, 256, n_layer=48, n_head=24, n_embd=1536)
        gpt = GPT(16384, 16 * 16, _TAMING_CIN["num_classes"], _TAMING_CIN["embed_dim"], _TAMING_CIN["depth"],
                  _TAMING_CIN["num_heads"])
    assert sum(p.numel() for n, p in gpt.named_parameters() if not n.startswith("start_embed")) == sum(
        p.numel() for p in theirs.parameters())
    assert (gpt.blocks[0].attn.num_heads, _TAMING_CIN["tokenizer"]["name"]) == (24, "vqgan_imagenet_f16_16384")
    entry = get_model_entry("vqgan_transformer_imagenet_cin")
    assert entry.pretrained.url.startswith("https://app.koofr.net/content/links/")

    torch.manual_seed(0)
    reference = TamingNet2Net(mingpt)
    payload = tmp_path / "last.ckpt"
    save_taming_transformer(payload, reference)
    with served_file(payload, monkeypatch, tmp_path) as requests:
        for _ in range(2):  # the registered sizes, made small
            ours = create_model("vqgan_transformer_imagenet_cin", pretrained=True, tokenizer=TAMING_TOKENIZER,
                                img_size=16, num_classes=10, **OUR_GPT).eval()
    assert requests == ["/content/links/90cbd5aa-ef70-4f5e-99bc-f12e5a89380e/files/get/last.ckpt"
                        "?path=%2F2021-04-03T19-39-50_cin_transformer%2Fcheckpoints%2Flast.ckpt"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["vqgan_transformer_imagenet_cin.ckpt"]
    codes = torch.randint(64, (2, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(codes, torch.tensor([3, 7])),
                                   reference.logits(torch.tensor([[3], [7]]), codes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(gpt=dict(block_size=32)), r"pos_emb \(1, 32, 32\) holds fewer than the prior's 64 positions"),
    (dict(gpt=dict(n_unmasked=4)), r"transformer.blocks.0.attn.mask is not causal"),
    (dict(extra={"cond_stage_model.encoder.conv_in.weight": torch.zeros(1)}), r"cond_stage_model.* is not supported"),
    (dict(extra={"permuter.forward_shuffle_idx": torch.arange(64)}), r"permuter.forward_shuffle_idx"),
    (dict(sizes=dict(depth=3)), r"missing keys: gpt\.blocks\.2\."),
    (dict(sizes=dict(num_classes=65)), r"65 classes need as many rows of transformer.tok_emb.weight \(64, 32\)"),
    (dict(sizes=dict(tokenizer=TOKENIZER)), r"first stage .* is a VQGAN; this prior's tokenizer is vqvae_small"),
], ids=["block_size", "n_unmasked", "cond_stage", "permuter", "depth", "classes", "tokenizer"])
def test_taming_transformers_that_do_not_fit_are_one_error_naming_the_file(tmp_path, mingpt, change, message):
    from visionzoo.checkpoint import CheckpointError

    torch.manual_seed(0)
    path = tmp_path / "last.ckpt"
    save_taming_transformer(path, TamingNet2Net(mingpt, **change.get("gpt", {})), **change.get("extra", {}))
    sizes = {"num_classes": 10, **change.get("sizes", {})}
    with pytest.raises(CheckpointError, match=message) as error:
        taming_prior(path, **sizes)
    assert str(path) in str(error.value)


def test_sample_draws_from_the_official_weights_with_pretrained(tmp_path, mingpt, monkeypatch, capsys):
    """`visionzoo sample` took only checkpoints of `visionzoo train`: taming's prior could be drawn from in Python
    only. --pretrained fetches the official file and draws what generate() draws with the same seed."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from visionzoo.cli import main
    from visionzoo.generative.code_prior import CodeTransformer
    from visionzoo.models import _registry as registry
    from visionzoo.models import get_model_entry
    from visionzoo.train.run import task_class

    small = dict(tokenizer=TAMING_TOKENIZER, img_size=16, num_classes=10, **OUR_GPT)
    name = "vqgan_transformer_imagenet_cin"
    monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(
        get_model_entry(name), builder=lambda **kwargs: CodeTransformer(**{**small, **kwargs})))
    torch.manual_seed(0)
    payload = tmp_path / "last.ckpt"
    save_taming_transformer(payload, TamingNet2Net(mingpt))
    with served_file(payload, monkeypatch, tmp_path) as requests:
        assert main(["sample", name, "--pretrained", "-n", "2", "--label", "7", "--top-k", "5", "--nrow", "2",
                     "--out", str(tmp_path / "grid.png")]) == 0
        model = create_model(name, pretrained=True).eval()
        with monkeypatch.context() as patch:  # images that are not finite name the weights as predict names them
            task = task_class(name)
            sample = task.sample
            patch.setattr(task, "sample", lambda *args, **kwargs: sample(*args, **kwargs) * float("inf"))
            assert main(["sample", name, "--pretrained", "-n", "2", "--out", str(tmp_path / "inf.png")]) == 2
    assert capsys.readouterr().err == (f"visionzoo sample: error: {name} drew images with non-finite values (NaN or "
                                       f"infinity) from {name}'s official weights\n")
    assert len(requests) == 1  # the other loads read the cache
    with torch.no_grad():
        expected = model.generate(2, torch.Generator().manual_seed(0), torch.tensor([7, 7]), 1.0, 5, None)
    grid = torch.from_numpy(np.array(Image.open(tmp_path / "grid.png").convert("RGB"))).permute(2, 0, 1) / 255
    assert grid.shape == (3, 16 + 2 * 2, 2 * 16 + 3 * 2)  # two 16 px cells, torchvision's 2 px padding
    torch.testing.assert_close(grid[:, 2:18, 2:18], expected[0].clamp(0, 1), atol=1 / 255, rtol=0)


@pytest.mark.parametrize("arguments, message", [
    (["vqgan_transformer", "--pretrained"], "vqgan_transformer has no official weights"),
    (["vqgan_transformer"], "give the weights to sample from: --checkpoint FILE"),
    (["vqgan_transformer_imagenet_cin", "--pretrained", "--checkpoint", "x.safetensors"], "one of them"),
    (["resnet18", "--pretrained"], "resnet18 is a classification model, which draws no images"),
])
def test_sample_asks_for_one_source_of_weights(tmp_path, capsys, arguments, message):
    from visionzoo.cli import main

    assert main(["sample", *arguments, "-n", "2", "--out", str(tmp_path / "grid.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error and not (tmp_path / "grid.png").exists()


def test_a_prior_built_on_the_meta_device_has_the_grid_and_parameters_of_one_built_on_the_cpu():
    """Its constructor encoded a blank image with the tokenizer to find the code grid, which fails on the meta device
    (no values to check or quantise): the training set-up counts a prior's parameters there before building it."""
    on_cpu = create_model("vqgan_transformer", tokenizer=TOKENIZER, img_size=16, **TINY)
    with torch.device("meta"):
        on_meta = create_model("vqgan_transformer", tokenizer=TOKENIZER, img_size=16, **TINY)
    assert on_meta.grid_size == on_cpu.grid_size == (4, 4)
    assert all(p.is_meta for p in on_meta.parameters())
    assert [(n, p.shape) for n, p in on_meta.named_parameters()] == [(n, p.shape) for n, p in on_cpu.named_parameters()]
