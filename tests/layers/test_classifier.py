"""reset_classifier keeps the model's device and dtype in every family (as timm's)."""

import pytest
import torch

from visionzoo.models import create_model

SMALL = ["vit_tiny_patch8_32", "deit_tiny_distilled_patch8_32", "swin_tiny_patch2_window4_32", "convnext_atto_32",
         "resnet18"]


@pytest.mark.parametrize("name", SMALL)
def test_a_new_head_is_built_in_the_models_dtype_and_runs(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(torch.bfloat16).eval()
    model.reset_classifier(3)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32, dtype=torch.bfloat16))
    assert logits.shape == (2, 3) and logits.dtype == torch.bfloat16


@pytest.mark.parametrize("name", [*SMALL, "vit4k_xs", "hipt_4k"])
def test_a_new_head_is_built_on_the_models_device(name):
    model = create_model(name, num_classes=10).to("meta")  # a device other than the CPU, without a GPU
    model.reset_classifier(4)
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.parametrize("name", [*SMALL, "vit4k_xs"])
def test_a_reset_moves_only_the_new_head_and_gives_it_the_models_mode(name):
    """As timm's: the new head takes the model's dtype and mode; the other modules keep theirs (here norms kept
    in float32 under a bfloat16 model, which a reset used to cast to bfloat16 with the rest)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(torch.bfloat16).eval()
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))]
    for norm in norms:
        norm.float()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model.reset_classifier(3)
    assert norms and {p.dtype for norm in norms for p in norm.parameters()} == {torch.float32}
    kept = {key: value for key, value in model.state_dict().items() if key in before and value.shape == before[key].shape}
    for key, value in kept.items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    heads = model.get_classifier()
    for head in heads if isinstance(heads, tuple) else (heads,):
        assert {p.dtype for p in head.parameters()} == {torch.bfloat16} and not head.training
    assert not any(m.training for m in model.modules())
