import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionzoo.layers import Linear, Mlp
from visionzoo.utils import native_bf16


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


native_bf16_cpu = pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="oneDNN's bf16 path needs AMX or "
                                     "AVX512-BF16")


def _recording_onednn(monkeypatch) -> list[str]:
    """Record the ``attr`` of every call of oneDNN's fused linear that visionzoo.layers.linear makes."""
    import visionzoo.layers.linear as linear

    calls, op = [], linear._ONEDNN_LINEAR

    def recording(x, weight, bias, attr, scalars, algorithm):
        calls.append(attr)
        return op(x, weight, bias, attr, scalars, algorithm)

    monkeypatch.setattr(linear, "_ONEDNN_LINEAR", recording)
    return calls


@native_bf16_cpu
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 32), (2, 5, 32), "strided"])
def test_bf16_inference_is_one_onednn_call_equal_to_autocast_linear(monkeypatch, bias, shape):
    """F.linear copies the bias into every output row before adding the product (addmm): a pass over the output.
    The bf16 inference product is oneDNN's fused linear instead, with autocast's operands and the same sums."""
    calls = _recording_onednn(monkeypatch)
    torch.manual_seed(1)
    reference = nn.Linear(32, 48, bias=bias)
    ours = Linear(32, 48, bias=bias)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(32, 9).t() if shape == "strided" else torch.randn(*shape)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = ours(x), reference(x)
    assert calls == ["none"]
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert torch.equal(out, expected)


@native_bf16_cpu
def test_products_of_at_most_16_cubed_multiply_adds_skip_onednn(monkeypatch):
    """oneDNN's call has a fixed cost (~25 µs) that torch's own loop for the smallest products does not pay (3–5 µs
    for one row of a 96→32 layer): a product of at most 16³ multiply-adds takes F.linear, a larger one oneDNN."""
    calls = _recording_onednn(monkeypatch)
    torch.manual_seed(4)
    reference = nn.Linear(96, 32)
    ours = Linear(96, 32)
    ours.load_state_dict(reference.state_dict())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for rows in (1, 2):
            x = torch.randn(rows, 96)
            assert torch.equal(ours(x), reference(x))
    assert calls == ["none"]  # 1 × 96 × 32 = 3,072 multiply-adds: F.linear; 2 rows, 6,144: oneDNN


def test_empty_and_single_rows_still_multiply():
    ours, reference = _pair()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x in (torch.randn(16), torch.randn(0, 16), torch.randn(3, 0, 16)):
            assert torch.equal(ours(x), reference(x))


@native_bf16_cpu
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_mlp_gelu_is_fused_into_fc1_on_the_float32_sums(monkeypatch, approximate):
    """The fused GELU acts on fc1's float32 sums of the bf16 operands, the unfused one on their bf16 rounding: the
    fused activations are those sums' GELU rounded once (within one bf16 step), closer than the unfused ones (mean
    error 0.7x on this AMX CPU)."""
    calls = _recording_onednn(monkeypatch)
    torch.manual_seed(2)
    mlp = Mlp(32, 96, act_layer=lambda: nn.GELU(approximate=approximate)).eval()
    x = torch.randn(4, 50, 32) * 2
    bf16 = [t.bfloat16().double() for t in (x, mlp.fc1.weight, mlp.fc1.bias)]
    exact = F.gelu(F.linear(*bf16), approximate=approximate)  # of the bf16 operands, in float64
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = mlp.hidden(x)
        assert calls == ["gelu"]
        unfused = F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias), approximate=approximate)
    fused_error, unfused_error = (fused.double() - exact).abs(), (unfused.double() - exact).abs()
    assert (fused_error <= exact.abs() * 2 ** -7 + 1e-5).all()  # 1e-5: oneDNN's GELU in its far negative tail
    assert fused_error.mean() < unfused_error.mean()


def test_mlp_fc1_hooks_still_see_fc1s_output():
    """A forward hook on fc1 (feature extraction, a user's probe) needs fc1's own output, which a fused GELU never
    materialises; with one the MLP calls fc1 as a module."""
    torch.manual_seed(3)
    mlp = Mlp(16, 48).eval()
    seen = []
    mlp.fc1.register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.randn(6, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
        assert len(seen) == 1 and torch.equal(seen[0], F.linear(x, mlp.fc1.weight, mlp.fc1.bias))
        assert torch.equal(out, mlp.fc2(mlp.act(seen[0])))


def test_flop_counter_counts_the_products_under_autocast():
    """FlopCounterMode counts aten.addmm, not oneDNN's op: under a dispatch mode the layer takes F.linear."""
    from torch.utils.flop_counter import FlopCounterMode

    mlp = Mlp(16, 48).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        mlp(torch.randn(10, 16))
    assert counter.get_total_flops() == 2 * 2 * 10 * 16 * 48
