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
