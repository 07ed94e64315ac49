import pytest
import torch
from torch import nn

from visionzoo.layers import Linear


def _pair(seed: int = 0) -> tuple[Linear, nn.Linear]:
    torch.manual_seed(seed)
    reference = nn.Linear(16, 8)
    ours = Linear(16, 8)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("grad_mode", [torch.inference_mode, torch.no_grad])
def test_autocast_inference_equals_nn_linear_and_reuses_the_cast(grad_mode):
    ours, reference = _pair()
    x = torch.randn(5, 16)
    with grad_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(x)
        first = ours(x)
        cached = ours._cast[1]
        second = ours(x)
        assert ours._cast[1] is cached
    assert first.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_cast_follows_in_place_weight_updates():
    ours, reference = _pair()
    x = torch.randn(5, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours(x)
    with torch.no_grad():
        ours.weight.mul_(2.0)
        reference.weight.mul_(2.0)
    ours.load_state_dict({"weight": ours.weight * 0.5 + 1.0, "bias": ours.bias})
    reference.load_state_dict(ours.state_dict())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ours(x), reference(x))


def test_with_autograd_or_without_autocast_it_is_nn_linear():
    ours, reference = _pair()
    x = torch.randn(5, 16, requires_grad=True)
    assert torch.equal(ours(x), reference(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x)
        assert torch.equal(out, reference(x))
    out.float().sum().backward()
    assert ours.weight.grad is not None and ours._cast is None
    assert set(ours.state_dict()) == {"weight", "bias"}


def test_an_edit_through_data_needs_drop_cast_caches():
    """An in-place edit through weight.data leaves the version counter alone, so the cast copy goes stale, as the
    class docstring says; drop_cast_caches(model) makes the next call use the edited weights."""
    from visionzoo.layers import drop_cast_caches

    ours, reference = _pair()
    model = nn.Sequential(ours, nn.ReLU())
    x = torch.randn(5, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
    ours.weight.data.mul_(2.0)
    reference.weight.data.mul_(2.0)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), before)  # stale, as documented
    drop_cast_caches(model)
    assert ours._cast is None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), torch.relu(reference(x)))


def test_autocast_inference_compiles_whole_and_exports():
    """The cast cache (keyed on the weights' storage) broke a compiled graph at every Linear (ViT-Ti under autocast:
    26 graphs and dynamo's recompile limit) and failed torch.export ('Cannot access data pointer of Tensor');
    traced or compiled, the layer is nn.Linear, whose autocast casts compile."""
    ours, reference = _pair(3)
    x = torch.randn(5, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(x)
        torch._dynamo.reset()
        compiled = torch.compile(ours, backend="eager", fullgraph=True)
        assert torch.equal(compiled(x), expected)
        assert torch.equal(torch.export.export(ours, (x,)).module()(x), expected)
    assert ours._cast is None
