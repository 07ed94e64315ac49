"""Small helpers shared by the model tests."""

import torch


def count(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal images of ``shape``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def checkpointed_step(model: torch.nn.Module, x: torch.Tensor, enable: bool, seed: int = 0):
    """A training-mode forward and backward of ``model`` on ``x`` after timm's call
    ``model.set_grad_checkpointing(enable)``: ``(output, {name: grad}, recomputed)`` (a feature extractor's
    maps flattened into one output), where ``recomputed``
    counts the module forwards run during the backward pass (0 without checkpointing). The RNG is seeded
    with ``seed`` first, so that dropout and stochastic depth draw the same masks in every call."""
    if enable:
        model.set_grad_checkpointing()  # timm's call, enable=True by default
    else:
        model.set_grad_checkpointing(False)
    model.train()
    model.zero_grad(set_to_none=True)
    calls = []
    handles = [module.register_forward_hook(lambda *_: calls.append(1)) for module in model.modules()]
    try:
        torch.manual_seed(seed)
        out = model(x)
        forward_calls = len(calls)
        outputs = out if isinstance(out, list) else [out]
        sum(y.float().square().mean() for y in outputs).backward()
        recomputed = len(calls) - forward_calls
    finally:
        for handle in handles:
            handle.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return torch.cat([y.detach().flatten() for y in outputs]), grads, recomputed


def assert_grad_checkpointing_changes_nothing(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Gradient checkpointing recomputes blocks in the backward pass, and outputs and gradients stay those
    of the plain run (dropout and stochastic depth included: the RNG state is replayed)."""
    plain, plain_grads, plain_recomputed = checkpointed_step(model, x, False, seed)
    out, grads, recomputed = checkpointed_step(model, x, True, seed)
    assert plain_recomputed == 0 and recomputed > 0
    torch.testing.assert_close(out, plain, atol=0, rtol=0)
    assert grads.keys() == plain_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-7, rtol=1e-6, msg=name)


def assert_same_outputs(ours, expected, atol: float = 1e-4, rtol: float = 1e-5) -> None:
    """Equal nested outputs (tensors in lists, tuples and dicts), within ``atol``/``rtol``."""
    assert type(ours) is type(expected), (type(ours), type(expected))
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(ours, expected, atol=atol, rtol=rtol)
    elif isinstance(expected, dict):
        assert ours.keys() == expected.keys()
        for key in expected:
            assert_same_outputs(ours[key], expected[key], atol, rtol)
    else:
        assert len(ours) == len(expected)
        for mine, theirs in zip(ours, expected):
            assert_same_outputs(mine, theirs, atol, rtol)


def assert_rebuilds_from_its_checkpoint(model, x: torch.Tensor, tmp_path) -> None:
    """A checkpoint of ``model`` saved as training does (its name and ``model_args``) rebuilds it: the same outputs."""
    from visionzoo.checkpoint import save_checkpoint
    from visionzoo.models import create_model

    path = tmp_path / "resized.safetensors"
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    meta={"model": {"name": model.model_name, "args": model.model_args}})
    rebuilt = create_model(model.model_name, checkpoint=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)


def assert_pool_built_and_reset_give_reference_outputs(reference, model_name: str, num_classes: int, global_pool: str,
                                                       x: torch.Tensor, atol: float = 1e-5) -> tuple:
    """``create_model(model_name, num_classes=, global_pool=)`` and a model given them by ``reset_classifier``,
    each loaded with ``reference``'s weights (strictly), give its logits and pre-logits on ``x``; returns both."""
    from visionzoo.models import create_model

    with torch.no_grad():
        expected = reference(x)
        expected_pre = reference.forward_head(reference.forward_features(x), pre_logits=True)
    built = create_model(model_name, num_classes=num_classes, global_pool=global_pool).eval()
    reset = create_model(model_name, num_classes=3).eval()
    reset.reset_classifier(num_classes, global_pool)
    for ours in (built, reset):
        ours.load_state_dict(reference.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), expected, atol=atol, rtol=1e-5)
            torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True), expected_pre,
                                       atol=atol, rtol=1e-5)
    return built, reset


def assert_trace_runs_at_other_batch_sizes(model: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.jit.trace`` of ``model`` (inference) on two images of ``x`` gives the model's outputs on one and on all
    of ``x``, as timm's traced models do: nothing in the traced graph is fixed at the traced batch size."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x[:2], check_trace=False)
        for batch in (1, len(x)):
            torch.testing.assert_close(traced(x[:batch]), model(x[:batch]), atol=1e-5, rtol=1e-5)


def assert_export_runs_at_other_batch_sizes(model: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.export`` of ``model`` (inference) with a dynamic batch size, as timm's models export, gives the model's
    outputs on one image and on all of ``x``."""
    with torch.no_grad():
        exported = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
        for batch in (1, len(x)):
            torch.testing.assert_close(exported.module()(x[:batch]), model(x[:batch]), atol=1e-5, rtol=1e-5)


def assert_fx_traces(model: torch.nn.Module, x: torch.Tensor, expected: dict[str, torch.Tensor] | None = None) -> None:
    """``torch.fx.symbolic_trace`` of ``model`` (traced with autograd on and off, as a user may) gives the model's
    outputs on ``x``, and torchvision's ``create_feature_extractor`` gives at each node of ``expected`` (a module's
    name: its output) the tensor there (computed eagerly by the caller), as for timm's models."""
    from torchvision.models.feature_extraction import create_feature_extractor

    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        traced_without_grad = torch.fx.symbolic_trace(model)
        reference = model(x)
        assert_same_outputs(traced(x), reference, atol=1e-5)
        assert_same_outputs(traced_without_grad(x), reference, atol=1e-5)
        if expected is None:
            return
        got = create_feature_extractor(model, list(expected))(x)
    assert got.keys() == expected.keys()
    for node, tensor in expected.items():
        torch.testing.assert_close(got[node], tensor, atol=1e-5, rtol=1e-5)
