"""The vector quantizer: nearest codes, straight-through gradients, losses, EMA codebook, dead codes, statistics."""

import functools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from taming.modules.vqvae.quantize import VectorQuantizer2
from vector_quantize_pytorch import VectorQuantize

from visionzoo.layers.vector_quantizer import VectorQuantizer, lloyd_kmeans


def test_each_vector_gets_its_nearest_code_in_either_layout():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 4, ema_decay=None).eval()
    z = torch.randn(2, 4, 3, 5)
    quantised, indices, _, _ = quantizer(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(indices.flatten(), torch.cdist(vectors, quantizer.codebook).argmin(1))
    assert indices.shape == (2, 3, 5) and quantised.shape == z.shape
    torch.testing.assert_close(quantised.permute(0, 2, 3, 1), quantizer.codebook[indices])
    tokens, token_indices, _, _ = quantizer(z.flatten(2).transpose(1, 2))  # Tensor[B, N, D]
    assert torch.equal(token_indices, indices.flatten(1))
    torch.testing.assert_close(tokens, quantised.flatten(2).transpose(1, 2))
    torch.testing.assert_close(quantizer.decode_indices(indices), quantised.permute(0, 2, 3, 1))


def test_gradients_pass_straight_through_and_the_losses_are_the_papers():
    torch.manual_seed(1)
    quantizer = VectorQuantizer(8, 3, commitment=0.25, ema_decay=None)
    z = torch.randn(4, 3, 2, 2, requires_grad=True)
    quantised, indices, loss, _ = quantizer(z)
    upstream = torch.randn_like(quantised)
    (quantised * upstream).sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, upstream)  # the decoder's gradient reaches the encoder unchanged
    codes = quantizer.codebook[indices].permute(0, 3, 1, 2)
    expected = 1.25 * torch.mean((z - codes) ** 2)  # codebook term + 0.25 x commitment term
    torch.testing.assert_close(loss, expected)
    z.grad = None
    loss.backward()
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z - codes).detach() / z.numel())  # commitment pulls z only
    assert quantizer.codebook.grad.abs().sum() > 0


def test_ema_moves_each_code_to_the_mean_of_its_vectors_and_eval_leaves_it():
    quantizer = VectorQuantizer(2, 2, ema_decay=0.0, dead_code_threshold=0.0)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    z = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [9.0, 9.0], [11.0, 13.0]]])  # Tensor[1, 4, 2]
    _, indices, loss, _ = quantizer(z)
    assert indices.tolist() == [[0, 0, 1, 1]]
    torch.testing.assert_close(quantizer.codebook, torch.tensor([[0.5, 1.5], [10.0, 11.0]]), atol=1e-4, rtol=0)
    assert loss.item() == pytest.approx(0.25 * 15 / 8, rel=1e-3)  # commitment to the updated codes only
    before = quantizer.codebook.clone()
    quantizer.eval()(z + 5)
    assert torch.equal(quantizer.codebook, before)


def test_dead_codes_restart_at_vectors_of_the_batch():
    torch.manual_seed(2)
    quantizer = VectorQuantizer(32, 4, ema_decay=0.5, dead_code_threshold=0.75)  # unused: count 1 → 0.5
    z = torch.randn(1, 64, 4) * 0.01 + 5.0  # far from every initial code: few codes win at first
    _, indices, _, stats = quantizer(z)
    dead = quantizer.ema_count < 0.75
    assert not dead.any()  # the restarted codes were given the threshold count
    on_an_input = (quantizer.codebook[:, None] == z[0][None]).all(-1).any(1)
    assert on_an_input.sum() >= 32 - indices.unique().numel()  # the unused codes restarted onto batch vectors
    _, later, _, later_stats = quantizer(z)
    assert later.unique().numel() > indices.unique().numel() and later_stats["usage"] > stats["usage"]


def test_a_dead_code_chosen_in_the_batch_serves_its_vectors_before_it_restarts():
    """Code 1 is dead (count 0.55 < 1 after the update) but nearest to (10.1, 0). It used to be restarted before
    the forward took its codes, so (10.1, 0) came out as the restart point (0.2, 0.1): loss 3.07, not 0.0023."""
    quantizer = VectorQuantizer(3, 2, ema_decay=0.9, dead_code_threshold=1.0, dead_code_restart="farthest")
    codebook, count = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), torch.tensor([5.0, 0.5, 5.0])
    with torch.no_grad():
        quantizer.codebook.copy_(codebook)
        quantizer.ema_count.copy_(count)
        quantizer.ema_sum.copy_(codebook * count[:, None])
    z = torch.tensor([[[0.1, 0.0], [-0.1, 0.0], [0.2, 0.1], [10.1, 0.0]]])  # Tensor[1, 4, 2]
    quantised, indices, loss, _ = quantizer(z)
    assert indices.tolist() == [[0, 0, 0, 1]]
    # Sonnet's VectorQuantizerEMA update: moving counts and sums, Laplace-smoothed counts.
    one_hot = torch.nn.functional.one_hot(indices[0], 3).float()
    moved_count = 0.9 * count + 0.1 * one_hot.sum(0)
    moved_sum = 0.9 * codebook * count[:, None] + 0.1 * one_hot.T @ z[0]
    total = moved_count.sum()
    moved = moved_sum / ((moved_count + 1e-5) / (total + 3e-5) * total)[:, None]
    torch.testing.assert_close(quantised[0], moved[indices[0]])
    torch.testing.assert_close(loss, 0.25 * torch.mean((z[0] - moved[indices[0]]) ** 2))
    assert quantizer.codebook[1].tolist() == pytest.approx([0.2, 0.1])  # restarted after, at the worst vector
    torch.testing.assert_close(quantizer.codebook[[0, 2]], moved[[0, 2]])


def test_an_empty_batch_in_training_leaves_the_codebook():
    """It used to decay every count, then fail restarting the dead codes: "random_ expects 'from' to be less than 'to'"."""
    quantizer = VectorQuantizer(8, 4)
    state = {name: value.clone() for name, value in quantizer.state_dict().items()}
    quantised, indices, _, _ = quantizer(torch.zeros(0, 4, 2, 2))
    assert quantised.shape == (0, 4, 2, 2) and indices.shape == (0, 2, 2)
    assert all(torch.equal(value, state[name]) for name, value in quantizer.state_dict().items())


@pytest.mark.parametrize("ema_decay, code_dim", [(0.99, None), (None, None), (0.99, 2), (None, 2)])
def test_an_empty_batch_has_a_zero_loss_no_codes_in_use_and_leaves_the_ema_codebook(ema_decay, code_dim):
    """Loss and perplexity used to be NaN (the mean of no vectors, a histogram of 0 / 0), so a training step's
    loss became NaN; now the loss is 0 (a sum over no vectors), its gradients zero, and usage and perplexity
    (the effective number of codes in use) both 0."""
    torch.manual_seed(0)
    quantizer, twin = (VectorQuantizer(8, 4, ema_decay=ema_decay, code_dim=code_dim) for _ in range(2))
    twin.load_state_dict(quantizer.state_dict())
    for empty, grid in ((torch.zeros(0, 4, 3, 3, requires_grad=True), (0, 3, 3)),
                        (torch.zeros(2, 0, 4, requires_grad=True), (2, 0))):
        quantised, indices, loss, stats = quantizer(empty)
        assert quantised.shape == empty.shape and indices.shape == grid
        assert loss.item() == 0.0 and stats["perplexity"].item() == 0.0 and stats["usage"].item() == 0.0
        loss.backward()
        assert all(p.grad is None or (torch.isfinite(p.grad).all() and not p.grad.any())
                   for p in quantizer.parameters())
    z = torch.randn(2, 4, 3, 3)  # the next batch meets the codebook it would have met without the empty ones
    torch.manual_seed(1)  # dead codes restart at random vectors
    after_empty = quantizer(z)
    torch.manual_seed(1)
    assert torch.equal(after_empty[1], twin(z)[1])
    assert all(torch.equal(value, twin.state_dict()[name]) for name, value in quantizer.state_dict().items())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_vector_leaves_the_ema_codebook_as_the_batch_without_it_would(bad):
    """One NaN vector in a training batch (a diverging encoder, a skipped step) made 6 of 8 codes NaN through the
    moving averages and the dead-code restarts, and every later batch then came out NaN, for good."""
    torch.manual_seed(0)
    quantizer, twin = (VectorQuantizer(8, 4) for _ in range(2))
    twin.load_state_dict(quantizer.state_dict())
    z = torch.randn(1, 9, 4)
    z[0, 4, 1] = bad
    torch.manual_seed(1)  # dead codes restart at random vectors
    _, _, loss, _ = quantizer(z)
    assert not torch.isfinite(loss)  # the batch's loss still says so
    torch.manual_seed(1)
    twin(torch.cat([z[:, :4], z[:, 5:]], dim=1))
    assert torch.isfinite(quantizer.codebook).all()
    assert all(torch.equal(value, twin.state_dict()[name]) for name, value in quantizer.state_dict().items())
    assert torch.isfinite(quantizer(torch.randn(1, 9, 4))[2])


def test_farthest_restart_puts_dead_codes_on_the_worst_quantised_vectors():
    quantizer = VectorQuantizer(4, 2, ema_decay=0.0, dead_code_threshold=0.5, dead_code_restart="farthest")
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [60.0, 60.0]]))
    # Codes 2 and 3 get no vector; the two vectors worst served by codes 0 and 1 are (5, 5) and (0, 4).
    z = torch.tensor([[[0.1, 0.0], [0.9, 0.1], [5.0, 5.0], [0.0, 4.0], [1.0, 0.2]]])
    quantizer(z)
    assert quantizer.codebook[2:].tolist() == [[5.0, 5.0], [0.0, 4.0]]
    _, indices, _, _ = quantizer(z)
    assert indices.flatten().tolist()[2:4] == [2, 3]  # the restarted codes now serve those vectors
    random = VectorQuantizer(4, 2, ema_decay=0.0, dead_code_threshold=0.5)
    with torch.no_grad():
        random.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [60.0, 60.0]]))
    torch.manual_seed(0)
    random(z)
    assert (random.codebook[2:, None] == z[0][None]).all(-1).any(1).all()  # on batch vectors, any of them


def test_random_restarts_land_on_distinct_vectors_of_the_batch():
    """Dead codes restarted at random vectors were drawn with replacement: with 31 dead codes and 64 vectors about 6
    came out copies of another (the lookup takes the first of two equal codes, so each copy died again), where
    Jukebox and vector-quantize-pytorch draw without replacement. Now distinct vectors while the batch has enough."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(32, 4, ema_decay=0.99, dead_code_threshold=1.0)
    with torch.no_grad():
        quantizer.codebook.add_(100.0)  # far from the batch: one code serves it all, the 31 others die
        quantizer.ema_sum.copy_(quantizer.codebook)
    z = torch.randn(1, 64, 4)
    _, indices, _, _ = quantizer(z)
    assert indices.unique().numel() == 1
    restarted = quantizer.codebook[torch.arange(32) != indices[0, 0]]
    assert len(restarted.unique(dim=0)) == 31 and (restarted[:, None] == z[0][None]).all(-1).any(1).all()
    _, later, _, _ = quantizer(z)
    assert later.unique().numel() == 31  # each restarted code now serves its vector
    crowded = VectorQuantizer(32, 4, ema_decay=0.99, dead_code_threshold=1.0)
    with torch.no_grad():
        crowded.codebook.add_(100.0)
        crowded.ema_sum.copy_(crowded.codebook)
    crowded(z[:, :10])  # more dead codes than vectors: every vector is a restart point, every dead code restarts
    assert len(crowded.codebook.unique(dim=0)) == 11 and (crowded.ema_count >= 1.0).all()


def test_perplexity_and_usage_count_the_codes_in_use():
    quantizer = VectorQuantizer(4, 2, ema_decay=None).eval()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [0.0, 9.0], [9.0, 0.0], [9.0, 9.0]]))
    all_four = quantizer(quantizer.codebook.detach()[None].repeat(1, 3, 1))[3]
    assert all_four["perplexity"].item() == pytest.approx(4.0) and all_four["usage"].item() == 1.0
    one = quantizer(torch.zeros(1, 5, 2))[3]
    assert one["perplexity"].item() == pytest.approx(1.0) and one["usage"].item() == 0.25


def test_factorised_l2_normalised_codes_look_up_by_cosine():
    torch.manual_seed(3)
    quantizer = VectorQuantizer(64, 16, code_dim=4, l2_normalize=True).eval()
    z = torch.randn(2, 10, 16)
    quantised, indices, _, _ = quantizer(z)
    projected = torch.nn.functional.normalize(quantizer.project_in(z), dim=-1)
    codes = torch.nn.functional.normalize(quantizer.codebook, dim=1)
    assert torch.equal(indices, (projected @ codes.T).argmax(-1))
    torch.testing.assert_close(quantised, quantizer.project_out(codes[indices]))
    assert quantised.shape == z.shape


def test_integer_vectors_are_refused_not_rounded():
    # before: the codes came back cast to the input's dtype, an int64 z got truncated codes (0.4 -> 0), silently
    quantizer = VectorQuantizer(4, 2, ema_decay=None)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.4, 0.4], [1.6, 1.6], [3.0, 3.0], [-1.0, -1.0]]))
    z = torch.tensor([[[0, 0], [2, 2]]])
    for call in (quantizer, quantizer.encode):
        with pytest.raises(ValueError, match=r"takes floating-point vectors, got torch.int64; convert them with "
                                             r"\.float\(\)"):
            call(z)
    assert quantizer(z.float())[0].tolist() == [[[0.4000000059604645] * 2, [1.600000023841858] * 2]]


@pytest.mark.parametrize("setting", [dict(commitment=float("nan")), dict(dead_code_threshold=float("nan"))])
def test_a_nan_commitment_or_dead_code_threshold_is_refused(setting):
    # before: taken; commitment=nan made every loss NaN, dead_code_threshold=nan turned the restarts off, silently
    with pytest.raises(ValueError, match="commitment and dead_code_threshold must be >= 0"):
        VectorQuantizer(4, 8, **setting)


@pytest.mark.parametrize("args, kwargs, name", [((8.5, 4), {}, "num_codes"), ((8, 4.0), {}, "dim"),
                                                 ((8, 4), dict(code_dim=2.5), "code_dim")])
def test_sizes_that_are_not_whole_numbers_are_refused_naming_them(args, kwargs, name):
    # before: torch's "randn() received an invalid combination of arguments", naming none of them
    with pytest.raises(ValueError, match=f"{name} must be a whole number"):
        VectorQuantizer(*args, **kwargs)
    quantizer = VectorQuantizer(np.int64(8), np.int64(4), code_dim=np.int64(2))
    assert quantizer(torch.randn(2, 4, 3, 3))[0].shape == (2, 4, 3, 3) and quantizer.codebook.shape == (8, 2)


def test_bad_shapes_and_settings_are_one_clear_error():
    with pytest.raises(ValueError, match=r"takes Tensor\[B, 8, H, W\]"):
        VectorQuantizer(4, 8)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="ema_decay"):
        VectorQuantizer(4, 8, ema_decay=1.0)
    with pytest.raises(ValueError, match="at least 2 codes"):
        VectorQuantizer(1, 8)
    with pytest.raises(ValueError, match="dead_code_restart must be one of"):
        VectorQuantizer(4, 8, dead_code_restart="nearest")
    # These used to be taken silently: code_dim=0 as no projection, a negative commitment as a push away from the code.
    with pytest.raises(ValueError, match=r"code_dim must be at least 1 \(or None: no projection\), got 0"):
        VectorQuantizer(4, 8, code_dim=0)
    with pytest.raises(ValueError, match="commitment and dead_code_threshold must be >= 0, got -0.25 and 1.0"):
        VectorQuantizer(4, 8, commitment=-0.25)
    with pytest.raises(ValueError, match="commitment and dead_code_threshold must be >= 0, got 0.25 and -1"):
        VectorQuantizer(4, 8, dead_code_threshold=-1)


def test_factorised_codes_update_under_bf16_autocast():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 8, code_dim=4, l2_normalize=True, dead_code_threshold=1.0).train()
    z = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, indices, loss, _ = quantizer(z)
    assert quantizer.codebook.dtype == torch.float32 and loss.dtype == torch.float32
    assert out.shape == z.shape and indices.shape == (2, 4, 4)


def test_bf16_autocast_picks_the_same_codes_as_float32():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(512, 32, ema_decay=None).eval()
    z = torch.randn(8, 32, 8, 8) * 0.2  # many close codes: bf16 distances would pick others for ~1% of them
    _, expected, _, _ = quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, indices, _, _ = quantizer(z)
    assert torch.equal(indices, expected)


def test_decode_indices_refuses_codes_outside_the_codebook():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, ema_decay=None).eval()
    torch.testing.assert_close(quantizer.decode_indices(torch.tensor([[7, 0]])), quantizer.codebook[torch.tensor([[7, 0]])])
    with pytest.raises(ValueError, match=r"code indices must be in 0\.\.7.*-1\.\.2"):
        quantizer.decode_indices(torch.tensor([[-1, 2]]))  # not code 7 from the end
    with pytest.raises(ValueError, match=r"code indices must be in 0\.\.7.*0\.\.8"):
        quantizer.decode_indices(torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="integer tensor, got torch.float32"):
        quantizer.decode_indices(torch.tensor([1.0, 2.0]))


def test_encode_is_the_forward_lookup_and_leaves_the_codebook_in_training_mode():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(32, 4, code_dim=3, l2_normalize=True).train()  # EMA, dead-code restarts
    z = torch.randn(2, 4, 3, 5) + 4.0  # far from the codes: a forward would restart dead codes
    before = quantizer.codebook.clone()
    indices = quantizer.encode(z)
    assert torch.equal(quantizer.codebook, before) and torch.equal(quantizer.ema_count, torch.ones(32))
    assert torch.equal(indices, quantizer.eval()(z)[1])
    assert torch.equal(quantizer.encode(z.flatten(2).transpose(1, 2)), indices.flatten(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("code_dim", [None, 4])
def test_a_quantiser_cast_as_a_whole_runs_in_its_dtype(dtype, code_dim):
    torch.manual_seed(0)
    reference = VectorQuantizer(16, 8, code_dim=code_dim).eval()
    quantiser = VectorQuantizer(16, 8, code_dim=code_dim).to(dtype).eval()
    quantiser.load_state_dict(reference.state_dict())
    z = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        out, indices, _, _ = quantiser(z.to(dtype))
        assert out.dtype == dtype and out.shape == z.shape
        if dtype == torch.float64:  # the codes float32 picks
            assert torch.equal(indices, reference(z)[1])
        out, _, loss, _ = quantiser.train()(z.to(dtype))  # the EMA update in that dtype too
    assert out.dtype == dtype and torch.isfinite(loss)


def test_the_sum_over_processes_needs_nothing_of_the_training_package(tmp_path):
    """The quantiser's sum over processes imported its collective from visionzoo.train.distributed, a layer that
    depended on the training package. It comes from visionzoo.distributed, which both use."""
    script = textwrap.dedent(f"""
        import sys
        import torch
        import torch.distributed as dist
        from visionzoo.layers.vector_quantizer import _sum_over_processes

        dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
        total = _sum_over_processes(torch.arange(3.0))
        dist.destroy_process_group()
        assert total.tolist() == [0.0, 1.0, 2.0], total
        loaded = sorted(name for name in sys.modules if name.startswith("visionzoo.train"))
        assert not loaded, loaded
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]


RESTART_RANKS_WORK = textwrap.dedent("""
    from visionzoo.layers.vector_quantizer import VectorQuantizer

    def work(rank):
        result = {}
        for restart in ("farthest", "random"):
            torch.manual_seed(rank)  # as the engine seeds each rank's step: another draw on each
            quantizer = VectorQuantizer(4, 2, ema_decay=0.5, dead_code_threshold=1.0, dead_code_restart=restart)
            quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [60.0, 60.0]]))
            quantizer.ema_sum.copy_(quantizer.codebook)
            # rank 0's vectors lie near codes 0 and 1; rank 1's one vector far from every code (and, for the
            # random restarts, rank 0 has none: its share of the batch is empty)
            if rank == 0:
                z = torch.tensor([[[0.1, 0.0], [0.9, 0.1], [0.0, 0.2]]]) if restart == "farthest" else torch.zeros(0, 1, 2)
            else:
                z = torch.tensor([[[20.0, -20.0]]])
            quantizer.train()(z)
            result[restart] = quantizer.codebook.tolist()
        return result
""")


def test_under_torchrun_dead_codes_restart_at_vectors_of_every_process(two_ranks):
    """Under torchrun each process restarted the dead codes at vectors of its own share of the batch, and
    DistributedDataParallel's broadcast of the buffers then kept rank 0's: a vector that only rank 1 held (the
    farthest of the global batch) was never a restart point, and a rank with no vectors restarted nothing while
    the others did. The candidates are now gathered from every process, rank 0 picks, and every process restarts
    the same codes at the same vectors."""
    ranks = two_ranks(RESTART_RANKS_WORK)
    assert ranks[0] == ranks[1]
    # codes 2 and 3 chose no vector: dead, they restart at the farthest vectors of the global batch, rank 1's first
    assert ranks[0]["farthest"][2] == [20.0, -20.0]
    assert [20.0, -20.0] in ranks[0]["random"][2:]  # rank 1's, the only vector of the global batch


def test_a_codebook_learnt_by_gradient_equals_tamings_quantizer_in_codes_loss_and_gradients():
    torch.manual_seed(0)
    theirs = VectorQuantizer2(48, 6, beta=0.25, legacy=False)  # legacy=True weighs the two terms the other way round
    theirs.embedding.weight.data.normal_()
    ours = VectorQuantizer(48, 6, commitment=0.25, ema_decay=None)
    ours.codebook.data.copy_(theirs.embedding.weight.data)
    z = torch.randn(2, 6, 5, 7)
    z_theirs, z_ours = z.clone().requires_grad_(), z.clone().requires_grad_()
    quantised_theirs, loss_theirs, (_, _, indices_theirs) = theirs(z_theirs)
    quantised_ours, indices_ours, loss_ours, _ = ours(z_ours)
    assert torch.equal(indices_ours.flatten(), indices_theirs)
    torch.testing.assert_close(quantised_ours, quantised_theirs)
    torch.testing.assert_close(loss_ours, loss_theirs)
    weights = torch.randn_like(z)
    ((quantised_theirs * weights).sum() + loss_theirs).backward()
    ((quantised_ours * weights).sum() + loss_ours).backward()
    torch.testing.assert_close(z_ours.grad, z_theirs.grad)
    torch.testing.assert_close(ours.codebook.grad, theirs.embedding.weight.grad)


def _lucidrains_twin(code_dim, l2_normalize, dead_code_threshold=0.0, **theirs_kwargs):
    """vector-quantize-pytorch's VectorQuantize and ours with the same codebook and projections, EMA decay 0.9,
    β = 0.25, plain straight-through (their default is the rotation trick), no k-means, no dead-code restart unless
    given a threshold."""
    theirs = VectorQuantize(8, 16, codebook_dim=code_dim, use_cosine_sim=l2_normalize, decay=0.9,
                            commitment_weight=0.25, threshold_ema_dead_code=dead_code_threshold, kmeans_init=False,
                            rotation_trick=False, **theirs_kwargs)
    ours = VectorQuantizer(16, 8, commitment=0.25, ema_decay=0.9, dead_code_threshold=dead_code_threshold,
                           code_dim=code_dim, l2_normalize=l2_normalize)
    with torch.no_grad():
        ours.codebook.copy_(theirs.codebook)
        ours.ema_sum.copy_(theirs._codebook.embed_avg[0])
        if code_dim:
            ours.project_in.load_state_dict(theirs.project_in.state_dict())
            ours.project_out.load_state_dict(theirs.project_out.state_dict())
    return theirs, ours


TWIN_SETTINGS = [(None, False), (4, False), (None, True), (4, True)]  # code_dim, l2_normalize


@pytest.mark.parametrize("code_dim, l2_normalize", TWIN_SETTINGS)
def test_ema_training_steps_equal_vector_quantize_pytorchs_codes_and_codebook(code_dim, l2_normalize):
    """Five training steps on the same batches: the same codes, counts, sums and codebook after each EMA step (and
    with code_dim + l2_normalize, their codebook_dim + use_cosine_sim: projected, unit vectors, unit codes). The one
    difference is by design (the module docstring): their output and commitment loss take the codes before the
    batch's EMA step, ours after it."""
    torch.manual_seed(0)
    theirs, ours = _lucidrains_twin(code_dim, l2_normalize)
    close = functools.partial(torch.testing.assert_close, atol=1e-6, rtol=0)
    for _ in range(5):
        z = torch.randn(2, 12, 8)
        z_theirs, z_ours = z.clone().requires_grad_(), z.clone().requires_grad_()
        before = theirs.codebook.clone()
        out_theirs, indices_theirs, loss_theirs = theirs(z_theirs)
        out_ours, indices_ours, loss_ours, _ = ours(z_ours)
        after = theirs.codebook
        assert torch.equal(indices_ours, indices_theirs)
        close(ours.code_vectors(), after)
        close(ours.ema_count, theirs._codebook.cluster_size[0])
        close(ours.ema_sum, theirs._codebook.embed_avg[0])
        with torch.no_grad():
            vectors = ours.project_in(z)
            vectors = torch.nn.functional.normalize(vectors, dim=-1) if l2_normalize else vectors
            for out, loss, codes in ((out_theirs, loss_theirs, before[indices_theirs]),
                                     (out_ours, loss_ours, after[indices_theirs])):
                close(out, ours.project_out(codes))
                close(loss, 0.25 * torch.mean((vectors - codes) ** 2))
        weights = torch.randn_like(z)
        (out_theirs * weights).sum().backward()
        (out_ours * weights).sum().backward()
        close(z_ours.grad, z_theirs.grad)  # the same straight-through path


@pytest.mark.parametrize("code_dim, l2_normalize", TWIN_SETTINGS)
def test_eval_quantises_a_feature_map_as_vector_quantize_pytorch(code_dim, l2_normalize):
    """Without an EMA step both output the same codes; their loss is 0 in eval mode, ours the commitment term."""
    torch.manual_seed(1)
    theirs, ours = _lucidrains_twin(code_dim, l2_normalize, accept_image_fmap=True)
    theirs.eval(), ours.eval()
    z = torch.randn(2, 8, 3, 5)
    out_theirs, indices_theirs, loss_theirs = theirs(z)
    out_ours, indices_ours, loss_ours, _ = ours(z)
    assert torch.equal(indices_ours, indices_theirs) and indices_ours.shape == (2, 3, 5)
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-6, rtol=0)
    assert loss_theirs.item() == 0.0 and loss_ours.item() > 0


@pytest.mark.parametrize("code_dim, l2_normalize", TWIN_SETTINGS)
def test_dead_codes_restart_as_vector_quantize_pytorchs(code_dim, l2_normalize):
    """A batch of 16 copies of one vector: one code serves them and the 15 others fall under the threshold after the
    EMA step; both sides restart those at the (only) vector, with the threshold's count, and leave the live one."""
    torch.manual_seed(2)
    theirs, ours = _lucidrains_twin(code_dim, l2_normalize, dead_code_threshold=2.0)
    z = torch.randn(1, 1, 8).expand(1, 16, 8)
    _, indices_theirs, _ = theirs(z)
    _, indices_ours, _, _ = ours(z)
    assert torch.equal(indices_ours, indices_theirs) and indices_ours.unique().numel() == 1
    close = functools.partial(torch.testing.assert_close, atol=1e-6, rtol=0)
    close(ours.code_vectors(), theirs.codebook)
    close(ours.ema_count, theirs._codebook.cluster_size[0])
    close(ours.ema_sum, theirs._codebook.embed_avg[0])
    live = indices_ours[0, 0]
    assert ours.ema_count[live] == pytest.approx(0.9 + 0.1 * 16)
    assert torch.equal(ours.ema_count[torch.arange(16) != live], torch.full((15,), 2.0))


@pytest.mark.parametrize("code_dim, l2_normalize", TWIN_SETTINGS)
def test_kmeans_init_equals_vector_quantize_pytorchs(code_dim, l2_normalize):
    """kmeans_init=True: the first training forward starts the codebook at k-means centroids of its batch (their
    k-means: codes drawn among the vectors, 10 Lloyd iterations, spherical with cosine similarity) with the clusters'
    sizes as counts; then the same codes, counts, sums and codebook as theirs at every step, from the same draws."""
    torch.manual_seed(0)
    theirs = VectorQuantize(8, 16, codebook_dim=code_dim, use_cosine_sim=l2_normalize, decay=0.9,
                            commitment_weight=0.25, threshold_ema_dead_code=0, kmeans_init=True, kmeans_iters=10,
                            rotation_trick=False)
    ours = VectorQuantizer(16, 8, commitment=0.25, ema_decay=0.9, dead_code_threshold=0, code_dim=code_dim,
                           l2_normalize=l2_normalize, kmeans_init=True)
    if code_dim:
        ours.project_in.load_state_dict(theirs.project_in.state_dict())
        ours.project_out.load_state_dict(theirs.project_out.state_dict())
    random_codes = ours.code_vectors().clone()
    close = functools.partial(torch.testing.assert_close, atol=1e-5, rtol=0)
    for step in range(3):
        z = torch.randn(2, 40, 8)
        torch.manual_seed(10 + step)
        _, indices_theirs, _ = theirs(z)
        torch.manual_seed(10 + step)
        _, indices_ours, _, _ = ours(z)
        assert torch.equal(indices_ours, indices_theirs)
        close(ours.code_vectors(), theirs.codebook)
        close(ours.ema_count, theirs._codebook.cluster_size[0])
        close(ours.ema_sum, theirs._codebook.embed_avg[0])
    assert bool(ours.initialised)
    assert (ours.code_vectors() - random_codes).abs().max() > 0.1  # the random start is gone


def test_kmeans_init_runs_once_and_its_flag_travels_in_the_state_dict():
    """The k-means runs at the first training forward only, not in eval mode, and not again in a quantiser that
    loads an initialised one's state (a resumed run); without kmeans_init the state dict is as it was."""
    assert "initialised" not in VectorQuantizer(8, 4).state_dict()
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, kmeans_init=True, dead_code_threshold=0)
    start = quantizer.codebook.clone()
    quantizer.eval()(torch.randn(1, 20, 4))
    assert torch.equal(quantizer.codebook, start) and not quantizer.initialised
    quantizer.train()(torch.randn(1, 20, 4) + 5)
    assert quantizer.initialised and quantizer.codebook.mean() > 3  # centroids of the shifted batch
    resumed = VectorQuantizer(8, 4, kmeans_init=True, dead_code_threshold=0)
    resumed.load_state_dict(quantizer.state_dict())
    z = torch.randn(1, 20, 4) - 5
    quantizer(z), resumed(z)  # an EMA step each, from the same state: the same codebook, no k-means at -5
    assert torch.equal(resumed.codebook, quantizer.codebook) and resumed.codebook.mean() > 0


def test_lloyd_kmeans_finds_two_clusters_and_keeps_an_empty_clusters_centroid():
    vectors = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    centroids, sizes = lloyd_kmeans(vectors, torch.tensor([[1.0, 1.0], [9.0, 1.0], [100.0, 100.0]]), 3)
    assert centroids.tolist() == [[0.0, 1.0], [10.0, 1.0], [100.0, 100.0]] and sizes.tolist() == [2, 2, 0]
    unit = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0]]), dim=1)
    centroids, sizes = lloyd_kmeans(unit, unit[[0, 2]], 2, spherical=True)
    torch.testing.assert_close(centroids, torch.tensor([[1.0, 0.0], [0.0995037, 0.9950372]]))
    assert sizes.tolist() == [2, 1]


def test_kmeans_iters_must_be_a_whole_number():
    with pytest.raises(ValueError, match="kmeans_iters must be a whole number >= 0, got -1"):
        VectorQuantizer(8, 4, kmeans_init=True, kmeans_iters=-1)


KMEANS_RANKS_WORK = textwrap.dedent("""
    from visionzoo.layers.vector_quantizer import VectorQuantizer

    def work(rank):
        torch.manual_seed(rank)  # another draw on each process, as the engine seeds them
        quantizer = VectorQuantizer(2, 2, ema_decay=0.5, dead_code_threshold=0, kmeans_init=True)
        # each process holds one of the two clusters of the global batch
        z = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]) if rank == 0 else torch.tensor([[[10.0, 0.0], [10.0, 1.0]]])
        quantizer.train()(z)
        return {"codebook": sorted(quantizer.codebook.tolist()), "counts": quantizer.ema_count.sum().item()}
""")


def test_under_torchrun_kmeans_init_clusters_the_global_batch_alike_on_every_process(two_ranks):
    """Each process's k-means over its own share of the batch would give each its own codebook (rank 0's at x = 0,
    rank 1's at x = 10), and DistributedDataParallel would keep rank 0's. The k-means runs over the gathered global
    batch, from rank 0's draw: the same centroids of all four vectors on both (either split of them, x summing to
    10), with counts summing to the global batch's 4."""
    ranks = two_ranks(KMEANS_RANKS_WORK)
    assert ranks[0] == ranks[1]
    assert sum(x for x, _ in ranks[0]["codebook"]) == pytest.approx(10.0) and ranks[0]["counts"] == pytest.approx(4.0)


@pytest.mark.parametrize("name", ["vqvae_small", "vqgan", "vit_vqgan"])
def test_tokenizers_take_kmeans_init(name):
    from visionzoo.models import create_model

    torch.manual_seed(0)
    model = create_model(name, kmeans_init=True)
    assert model.quantizer.kmeans_init and not model.quantizer.initialised
    model.train()(torch.rand(2, model.in_chans, 32, 32))
    assert model.quantizer.initialised


def test_kmeans_init_of_a_codebook_learnt_by_gradient_takes_the_centroids():
    """Without an EMA (ema_decay=None) the centroids become the codebook parameter itself, which the optimizer then
    moves; a batch with fewer vectors than codes draws some of them twice, as vector-quantize-pytorch's does."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(4, 2, ema_decay=None, kmeans_init=True)
    z = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [10.0, 0.0]]])
    quantizer.train()(z)
    assert isinstance(quantizer.codebook, torch.nn.Parameter) and quantizer.initialised
    for code in quantizer.codebook.tolist():  # each code a centroid of some of the three vectors
        assert code in ([0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [0.0, 0.5])
    assert [10.0, 0.0] in quantizer.codebook.tolist()
