"""RoI Align (Mask R-CNN) and RoI Pool (Fast R-CNN), with torchvision's signatures and results.

RoI Align averages bilinear samples of the feature map on a regular grid inside each output bin.
A sample's weight is a product of a y factor and an x factor (including the "outside the map"
test), so for one RoI the whole operation is ``Ay @ F @ Ax^T / count``: ``Ay`` [PH, H] holds, for
each output row, the summed bilinear weights of its sample rows, and ``Ax`` [PW, W] likewise for
columns. Per RoI that is two small matrix products on a strided view of the feature map (no copy)
or, where a fixed sampling ratio leaves most rows or columns of the RoI unsampled, on just the
sampled ones; the backward pass runs the transposed products and adds into the gradient in place
(``_RoIAlignFunction``). The work is ~PH multiply-adds per feature value under the RoI, done by
BLAS, against torchvision's 4 per sample point and channel in scalar code. The sample positions,
the clamping at the map border and the sample counts follow torchvision's CPU kernel operation
by operation, in the input's dtype (float32 for float16/bfloat16 input, which is also what
torchvision's autocast does).

RoI Pool takes, in each bin of the rounded RoI, the maximum (the first one in row-major order on
ties, which is where the gradient goes), 0 for an empty bin: per RoI, the maxima of the column bins
of every row, then of the row bins of those.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

__all__ = ["roi_align", "roi_pool", "boxes_to_rois", "RoIAlign", "RoIPool"]

# Rows (columns) of a RoI are gathered one by one, instead of read as one strided block, when fewer
# than this fraction of the block's rows (columns) carry a sample.
SPARSE_FRACTION = 0.6


def _pair(size: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(size, numbers.Integral):  # NumPy's too, as torchvision takes them
        size = (size, size)
    try:
        whole = len(size) == 2 and all(int(s) == s and s >= 0 for s in size)
    except (TypeError, ValueError, OverflowError):  # no sequence, a string, NaN, inf
        whole = False
    if not whole:
        raise ValueError(f"{name} must be a non-negative int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Tensor[K, 5] (image index, x1, y1, x2, y2) from per-image lists of Tensor[L_i, 4] xyxy boxes.

    The result has the lists' promoted dtype (``torch.cat``'s, as in torchvision: an empty int64 list
    beside float32 boxes gives float32); no lists give Tensor[0, 5] float32.
    """
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor):
            raise ValueError(f"boxes[{i}] must be Tensor[L, 4], got {type(b).__name__}")
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be Tensor[L, 4], got shape {tuple(b.shape)}")
    if not boxes:
        return torch.zeros((0, 5))
    concat = torch.cat(boxes)
    ids = [torch.full((b.shape[0], 1), i, dtype=concat.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(ids), concat], 1)


def _as_rois(boxes: Tensor | list[Tensor], input: Tensor, name: str) -> Tensor:
    """Tensor[K, 5] (batch index, x1, y1, x2, y2) from either accepted box layout, checked."""
    if input.dim() != 4:
        raise ValueError(f"{name}: input must be Tensor[N, C, H, W], got shape {tuple(input.shape)}")
    if isinstance(boxes, (list, tuple)):
        if len(boxes) > input.shape[0]:
            raise ValueError(f"{name}: {len(boxes)} box lists for a batch of {input.shape[0]} feature maps")
        try:
            rois = boxes_to_rois(list(boxes)).to(input.device)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    else:
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"{name}: boxes must be Tensor[K, 5] or a list of Tensor[L, 4], got {shape}")
        if boxes.is_meta and not input.is_meta:
            raise ValueError(f"{name}: boxes are on the meta device but input is on {input.device}: the boxes' values are needed")
        rois = boxes
    if rois.shape[0] == 0 or rois.is_meta:
        return rois
    if rois.is_floating_point() and not bool(rois[:, 1:].isfinite().all()):
        # torchvision's kernels turn such a box into an undefined sample count (NaN or garbage, or a crash)
        bad = int((~rois[:, 1:].isfinite()).any(1).nonzero()[0])
        where = f"boxes[{bad}]" if isinstance(boxes, Tensor) else f"box {bad} of the lists (image {int(rois[bad, 0])})"
        raise ValueError(f"{name}: {where} has a NaN or infinite coordinate: {rois[bad, 1:].tolist()}")
    if isinstance(boxes, Tensor):
        batch = rois[:, 0].long()
        if int(batch.min()) < 0 or int(batch.max()) >= input.shape[0]:
            bad = int(((batch < 0) | (batch >= input.shape[0])).nonzero()[0])
            raise ValueError(
                f"{name}: boxes[{bad}, 0] = {rois[bad, 0].item()} is not a batch index in [0, {input.shape[0] - 1}]"
            )
    return rois


def _empty_like_output(input: Tensor, k: int, ph: int, pw: int) -> Tensor:
    """Zeros [K, C, PH, PW] for no RoIs, no bins or an empty map, still tied to ``input`` where the result
    has no elements, so its gradient is 0, not None (as torchvision's)."""
    n, c, height, width = input.shape
    if k * ph * pw == 0 and input.numel():
        return input[:1, :, :1, :1].expand(k, c, ph, pw)
    return input.new_zeros(k, c, ph, pw)


def _compute_dtype(input: Tensor) -> torch.dtype:
    return input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32


def _axis_samples(start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int) -> tuple[Tensor, ...]:
    """Where each RoI's samples read along one axis, as torchvision's CPU kernel places them.

    start, bin_size: Tensor[K] (compute dtype); grid: Long[K] samples per bin along the axis.
    Returns (low, high, w_low, w_high, used), each Tensor[K, pooled, G] (G the largest grid): sample
    g of output row p reads rows ``low`` and ``high`` with weights ``w_low`` and ``w_high``; ``used``
    is False past the RoI's grid and outside [-1, size] (torchvision drops a sample outside in y or
    x), where both weights are 0.
    """
    dtype, device = start.dtype, start.device
    g_max = max(int(grid.max()), 1) if start.shape[0] else 1
    p = torch.arange(pooled, device=device, dtype=dtype)[None, :, None]
    i = torch.arange(g_max, device=device)
    # torchvision: start + p * bin + (i + .5) * bin / grid, evaluated left to right.
    grid_f = grid.to(dtype).clamp(min=1)[:, None, None]
    pos = start[:, None, None] + p * bin_size[:, None, None]
    pos = pos + (i.to(dtype) + 0.5)[None, None, :] * bin_size[:, None, None] / grid_f
    used = (i[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.long()
    top = low >= size - 1
    low = torch.where(top, size - 1, low)
    high = torch.where(top, size - 1, low + 1)
    pos = torch.where(top, low.to(dtype), pos)
    frac = pos - low.to(dtype)
    return low, high, torch.where(used, 1.0 - frac, 0.0), torch.where(used, frac, 0.0), used


def _axis_weights(samples: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Separable bilinear weights along one axis for K RoIs, in crop coordinates.

    samples: :func:`_axis_samples`' tensors. Returns (weights Tensor[K, pooled, S], first Long[K], count
    Long[K]): row ``first[k] + s`` of the feature map gets weight ``weights[k, p, s]`` in output row p,
    summed over the p's samples; rows ``first[k]`` to ``first[k] + count[k] - 1`` hold every row read.
    """
    low, high, w_low, w_high, used = samples
    k, pooled, g_max = low.shape
    big = torch.iinfo(torch.int64).max
    first = torch.where(used, low, big).amin((1, 2))
    last = torch.where(used, high, -1).amax((1, 2))
    first = torch.where(last >= 0, first, 0)
    span = int((last - first + 1).clamp(min=1).max()) if k else 1
    weights = torch.zeros(k, pooled, span, dtype=w_low.dtype, device=w_low.device)
    shape = (k, pooled, g_max)
    weights.scatter_add_(2, (low - first[:, None, None]).clamp(0, span - 1).reshape(k, pooled, -1), w_low.reshape(shape))
    weights.scatter_add_(
        2, (high - first[:, None, None]).clamp(0, span - 1).reshape(k, pooled, -1), w_high.reshape(shape)
    )
    return weights, first, last - first + 1


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI Align with average pooling (Mask R-CNN); torchvision.ops.roi_align's semantics and results.

    Args:
        input: Tensor[N, C, H, W] float (float16/bfloat16 are computed in float32 and returned in their dtype).
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of N' <= N Tensor[L_i, 4] xyxy,
            one per image, in input coordinates before ``spatial_scale``.
        output_size: (PH, PW) or an int for both.
        spatial_scale: factor from box coordinates to feature-map coordinates (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; <= 0: ceil(roi size / output size) per RoI.
        aligned: shift boxes by -0.5 pixel (Detectron2's alignment); False keeps the legacy behaviour,
            which also stretches RoIs smaller than 1x1 to 1x1.

    Returns:
        Tensor[K, C, PH, PW] in ``input``'s dtype. Gradients flow to ``input`` only, as in torchvision.

    On the meta device the result is an empty meta Tensor[K, C, PH, PW] (boxes on meta with input
    elsewhere raise ValueError: torchvision returns uninitialised memory).

    Bad input: K = 0 gives Tensor[0, C, PH, PW], PH or PW = 0 Tensor[K, C, PH, PW] (no elements). A flipped box (x2 < x1) is, with ``aligned=False``,
    stretched to width 1 starting at x1; with ``aligned=True`` it keeps its negative size: no samples
    with the adaptive grid (output 0; torchvision's CPU kernel fails to allocate a negative-sized
    buffer when only one axis is that flipped), samples walking backwards from x1 with a fixed grid,
    as in torchvision. A batch index outside [0, N), or a NaN or infinite box coordinate, raises
    ValueError (torchvision reads out of bounds; gives NaN, zeros or a crash). Samples more than one pixel outside the map count as zero; those within are clamped to
    the border. A NaN or infinite feature value reaches only the bins whose samples read it, as in
    torchvision: NaN where it is read with weight 0 (0 * inf), +-inf where weighted. (torchvision's CPU
    kernel also reads pixel (0, 0) with weight 0 for each sample outside the map, so a NaN there spreads
    to those bins too; its CUDA kernel reads nothing for them, nor do we.)
    """
    rois = _as_rois(boxes, input, "roi_align")
    ph, pw = _pair(output_size, "output_size")
    n, c, height, width = input.shape
    if input.is_meta:  # shapes only (tracing, FakeTensor-style planning), as torchvision's meta kernel
        return input.new_empty(rois.shape[0], c, ph, pw)
    dtype = _compute_dtype(input)
    if rois.shape[0] * ph * pw == 0 or input.numel() == 0:
        return _empty_like_output(input, rois.shape[0], ph, pw)
    with torch.autocast(device_type=input.device.type, enabled=False):
        r = rois.detach().to(dtype)
        offset = 0.5 if aligned else 0.0
        start_w, start_h = r[:, 1] * spatial_scale - offset, r[:, 2] * spatial_scale - offset
        roi_w = r[:, 3] * spatial_scale - offset - start_w
        roi_h = r[:, 4] * spatial_scale - offset - start_h
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        if sampling_ratio > 0:
            grid_h = torch.full_like(r[:, 0], sampling_ratio, dtype=torch.long)
            grid_w = grid_h
        else:
            grid_h, grid_w = torch.ceil(roi_h / ph).long(), torch.ceil(roi_w / pw).long()
        count = (grid_h * grid_w).clamp(min=1).to(dtype)
        samples_y = _axis_samples(start_h, bin_h, grid_h, ph, height)
        samples_x = _axis_samples(start_w, bin_w, grid_w, pw, width)
        wy, first_y, rows = _axis_weights(samples_y)
        wx, first_x, cols = _axis_weights(samples_x)
        wy = wy / count[:, None, None]
        plan = _plan(r[:, 0].long(), wy, first_y, rows, wx, first_x, cols, samples_y, samples_x)
        out = _RoIAlignFunction.apply(input.to(dtype), plan)
    return out.to(input.dtype)


def _axis_slices(weights: Tensor, first: Tensor, count: Tensor) -> list[tuple[int, int, Tensor | None, Tensor]]:
    """Per RoI (first, count, index or None, weights Tensor[P, n]): the feature rows (columns) to read.

    ``index`` lists the sampled rows when they are few next to the block ``first .. first + count``;
    ``weights`` then has one column per listed row, else one per row of the block.
    """
    used = weights.abs().amax(1) > 0  # [K, S]
    n_used = used.sum(1).tolist()
    firsts, counts = first.tolist(), count.clamp(min=0).tolist()
    plans = []
    for k, (f, n, u) in enumerate(zip(firsts, counts, n_used, strict=True)):
        if u < SPARSE_FRACTION * n:
            local = used[k].nonzero().squeeze(1)
            plans.append((f, n, local + f, weights[k][:, local]))
        else:
            plans.append((f, n, None, weights[k, :, :n]))
    return plans


def _plan(batch: Tensor, wy: Tensor, first_y: Tensor, rows: Tensor, wx: Tensor, first_x: Tensor, cols: Tensor,
          samples_y: tuple[Tensor, ...], samples_x: tuple[Tensor, ...]):
    return batch.tolist(), _axis_slices(wy, first_y, rows), _axis_slices(wx, first_x, cols), (samples_y, samples_x)


def _crop(image: Tensor, row_plan, col_plan) -> Tensor:
    """The [nr, nc, C] feature values a RoI reads from ``image`` [H, W, C]: a view where possible."""
    y0, ny, y_index, _ = row_plan
    x0, nx, x_index, _ = col_plan
    crop = image[:, x0 : x0 + nx] if x_index is None else image.index_select(1, x_index)
    return crop[y0 : y0 + ny] if y_index is None else crop.index_select(0, y_index)


def _pool_crop(crop: Tensor, wy: Tensor, wx: Tensor, out: Tensor) -> None:
    """out [PH, PW, C] = wy [PH, nr] @ crop [nr, nc, C] @ wx^T [nc, PW], per channel."""
    t = torch.mm(wy, crop.reshape(wy.shape[1], -1)).view(wy.shape[0], wx.shape[1], crop.shape[-1])
    torch.matmul(wx, t, out=out)


def _touches(samples: list[Tensor], first: int, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """Float[P, count] each (1 or 0): which of rows ``first .. first + count - 1`` output row p's samples
    read at all, read with a zero weight, and read with a positive weight (one RoI's ``_axis_samples``)."""
    low, high, w_low, w_high, used = samples
    reads = [torch.zeros(low.shape[0], count, device=low.device) for _ in range(3)]
    for rows, weight in ((low, w_low), (high, w_high)):
        rows = (rows - first).clamp(0, max(count - 1, 0))
        for read, how in zip(reads, (used, used & (weight == 0), used & (weight > 0)), strict=True):
            read.scatter_add_(1, rows, how.float())
    return tuple(read.clamp_(max=1) for read in reads)


def _pool_non_finite(image: Tensor, row_plan, col_plan, samples: list[list[Tensor]], out: Tensor) -> None:
    """Redo one RoI's output [PH, PW, C] from ``image`` [H, W, C] holding NaN or infinite values in its
    window as torchvision's kernel sums them: the finite values pooled as usual with the others set to
    0, then NaN where a NaN is read, an infinity is read with weight 0, or both infinities with a positive
    weight; +-inf where only that infinity is read with a positive weight."""
    (y0, ny, _, wy), (x0, nx, _, wx) = row_plan, col_plan
    window = image[y0 : y0 + ny, x0 : x0 + nx]
    _pool_crop(_crop(image, row_plan, col_plan).nan_to_num(0.0, 0.0, 0.0), wy, wx, out)
    (any_y, zero_y, positive_y), (any_x, zero_x, positive_x) = _touches(samples[0], y0, ny), _touches(samples[1], x0, nx)

    def reached(rows: Tensor, values: Tensor, cols: Tensor) -> Tensor:
        return torch.einsum("ph,hwc,qw->pqc", rows, values.to(rows.dtype), cols) > 0

    infinite = window.isinf()
    plus = reached(positive_y, window == math.inf, positive_x)
    minus = reached(positive_y, window == -math.inf, positive_x)
    nan = reached(any_y, window.isnan(), any_x) | reached(zero_y, infinite, any_x) | reached(any_y, infinite, zero_x)
    out.masked_fill_(plus, math.inf).masked_fill_(minus, -math.inf).masked_fill_(nan | (plus & minus), math.nan)


class _RoIAlignFunction(torch.autograd.Function):
    """Forward: out[k] = wy_k @ crop_k @ wx_k^T per RoI. Backward: grad_crop_k = wy_k^T @ g_k @ wx_k, added in place."""

    @staticmethod
    def forward(ctx, features: Tensor, plan) -> Tensor:
        batch, row_plans, col_plans, samples = plan
        n, c, height, width = features.shape
        ph, pw = row_plans[0][3].shape[0], col_plans[0][3].shape[0]
        images = features.permute(0, 2, 3, 1)  # channels last: a pixel's C values are contiguous
        if not images.is_contiguous():
            images = images.contiguous()
        out = features.new_empty(len(batch), ph, pw, c)  # every row is written below (zeros are slow)
        for k, (b, row_plan, col_plan) in enumerate(zip(batch, row_plans, col_plans, strict=True)):
            wy, wx = row_plan[3], col_plan[3]
            if wy.shape[1] == 0 or wx.shape[1] == 0:
                out[k] = 0.0
                continue
            _pool_crop(_crop(images[b], row_plan, col_plan), wy, wx, out[k])
        if not bool(images.sum().isfinite()):  # one cheap reduction: any NaN or inf makes the sum non-finite
            # A NaN or infinite value in a crop reaches every output of its RoI through the zero weights
            # (0 * inf = nan), and a sparse crop may skip one that torchvision's kernel reads with weight 0.
            bad_pixels = ~images.isfinite().all(-1)  # [N, H, W]
            for k, (b, (y0, ny, _, _), (x0, nx, _, _)) in enumerate(zip(batch, row_plans, col_plans, strict=True)):
                if bool(bad_pixels[b, y0 : y0 + ny, x0 : x0 + nx].any()):
                    per_axis = [[t[k] for t in axis] for axis in samples]
                    _pool_non_finite(images[b], row_plans[k], col_plans[k], per_axis, out[k])
        ctx.plan = plan
        ctx.shape = (n, height, width, c)
        return out.permute(0, 3, 1, 2).contiguous()  # NCHW memory, as torchvision's: .view() works

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        batch, row_plans, col_plans, _ = ctx.plan
        n, height, width, c = ctx.shape
        grad_images = grad_out.new_zeros(n, height, width, c)
        grads = grad_out.permute(0, 2, 3, 1)  # [K, PH, PW, C]
        for k, (b, row_plan, col_plan) in enumerate(zip(batch, row_plans, col_plans, strict=True)):
            (y0, ny, y_index, wy), (x0, nx, x_index, wx) = row_plan, col_plan
            if wy.shape[1] == 0 or wx.shape[1] == 0:
                continue
            t = torch.matmul(wx.t(), grads[k])  # [PH, nc, C]
            g = torch.mm(wy.t(), t.reshape(wy.shape[0], -1)).view(wy.shape[1], wx.shape[1], c)
            image = grad_images[b]
            if y_index is None and x_index is None:
                image[y0 : y0 + ny, x0 : x0 + nx] += g
            elif y_index is None:
                image[y0 : y0 + ny].index_add_(1, x_index, g)
            elif x_index is None:
                image[:, x0 : x0 + nx].index_add_(0, y_index, g)
            else:
                flat = (y_index[:, None] * width + x_index[None, :]).reshape(-1)
                image.view(height * width, c).index_add_(0, flat, g.reshape(-1, c))
        return grad_images.permute(0, 3, 1, 2), None


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round goes to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI max pooling (Fast R-CNN); torchvision.ops.roi_pool's semantics and results.

    The box is scaled and rounded to whole cells (half away from zero), given at least one cell, and
    split into PH x PW bins with floor/ceil edges; each output is the maximum of its bin clipped to
    the map (0 for an empty bin).

    Args:
        input: Tensor[N, C, H, W] float (float16/bfloat16 computed in float32).
        boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of Tensor[L_i, 4] xyxy.
        output_size: (PH, PW) or an int. spatial_scale: box-to-map coordinate factor.

    Returns:
        Tensor[K, C, PH, PW] in ``input``'s dtype; the gradient of each output goes to its arg-max (the
        first maximum in row-major order), none from an empty bin. On the meta device: as :func:`roi_align`.

    Bad input: K = 0 or PH or PW = 0 gives an empty result; a flipped box (x2 < x1) is rounded, then given width 1;
    a batch index outside [0, N) or a NaN or infinite box coordinate raises ValueError. NaN features
    are skipped (a bin of only NaN or values <= -FLT_MAX gives -FLT_MAX and no gradient), as in
    torchvision.
    """
    rois = _as_rois(boxes, input, "roi_pool")
    ph, pw = _pair(output_size, "output_size")
    n, c, height, width = input.shape
    if input.is_meta:  # shapes only (tracing, FakeTensor-style planning), as torchvision's meta kernel
        return input.new_empty(rois.shape[0], c, ph, pw)
    dtype = _compute_dtype(input)
    if rois.shape[0] * ph * pw == 0 or input.numel() == 0:
        return _empty_like_output(input, rois.shape[0], ph, pw)
    with torch.autocast(device_type=input.device.type, enabled=False):
        r = rois.detach().to(dtype)
        start_w, start_h = _round_half_away(r[:, 1] * spatial_scale), _round_half_away(r[:, 2] * spatial_scale)
        end_w, end_h = _round_half_away(r[:, 3] * spatial_scale), _round_half_away(r[:, 4] * spatial_scale)
        roi_w = (end_w - start_w + 1).clamp(min=1)
        roi_h = (end_h - start_h + 1).clamp(min=1)
        h_lo, h_hi = _bin_edges(roi_h / ph, ph, start_h.long(), height)
        w_lo, w_hi = _bin_edges(roi_w / pw, pw, start_w.long(), width)
        bins = (r[:, 0].long(), h_lo, h_hi, w_lo, w_hi)
        out = _RoIPoolFunction.apply(input.to(dtype), bins)
    return out.to(input.dtype)


def _bin_edges(bin_size: Tensor, pooled: int, start: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Long[K, pooled] first and end (exclusive) cells of each bin, clipped to [0, size]."""
    p = torch.arange(pooled, device=bin_size.device, dtype=bin_size.dtype)
    lo = torch.floor(p[None, :] * bin_size[:, None]).long() + start[:, None]
    hi = torch.ceil((p[None, :] + 1) * bin_size[:, None]).long() + start[:, None]
    return lo.clamp(0, size), hi.clamp(0, size)


def _bin_max(values: Tensor, lo: Tensor, hi: Tensor, origin: int, dim: int, index: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """Max of ``values`` over the bins [lo_p, hi_p) of dimension ``dim``, counted from ``origin``.

    Returns (max, with dimension ``dim`` now the P bins; offset of the first maximum inside its bin,
    if ``index``; Long[P, B] positions read). A bin narrower than B repeats its last cell, which
    changes neither the maximum nor where it first occurs; an empty bin's result is meaningless
    (the caller masks it). ``amax`` plus a first-match search is much faster than ``max(dim)``.
    """
    width = max(int((hi - lo).max()), 1)
    pos = (lo - origin)[:, None] + torch.arange(width, device=values.device)
    pos = torch.minimum(pos, (hi - origin - 1)[:, None]).clamp(0, values.shape[dim] - 1)
    picked = values.index_select(dim, pos.reshape(-1))
    picked = picked.view(*values.shape[:dim], *pos.shape, *values.shape[dim + 1 :])
    best = picked.amax(dim + 1)
    if not index:
        return best, None, pos
    shape = (width, *([1] * (values.dim() - dim - 1)))
    countdown = torch.arange(width, 0, -1, device=values.device, dtype=values.dtype).view(shape)
    # sign(v - max) + 1 is 1 at a maximum and 0 elsewhere; times the countdown, its max marks the first.
    marks = (picked - best.unsqueeze(dim + 1)).sign_().add_(1).mul_(countdown).amax(dim + 1)
    if bool(torch.isnan(marks).any()):  # an infinite maximum (inf - inf): compare exactly instead
        exact = torch.where(picked == best.unsqueeze(dim + 1), countdown, 0).amax(dim + 1)
        marks = torch.where(torch.isnan(marks), exact, marks)
    return best, width - marks.long(), pos


class _RoIPoolFunction(torch.autograd.Function):
    """Forward: per RoI, the max over each bin (row-bin maxima of column-bin maxima), and its flat
    arg-max when a gradient is wanted. Backward: every output's gradient added at its arg-max."""

    @staticmethod
    def forward(ctx, features: Tensor, bins) -> Tensor:
        batch, h_lo, h_hi, w_lo, w_hi = bins
        n, c, height, width = features.shape
        k, ph, pw = h_lo.shape[0], h_lo.shape[1], w_lo.shape[1]
        need_index = ctx.needs_input_grad[0]
        if bool(torch.isnan(features).any()):  # NaN never wins a comparison in the kernel; nor does -inf
            features = features.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        images = features.permute(0, 2, 3, 1).contiguous()  # [N, H, W, C]: a pixel's C values together
        out = features.new_zeros(k, ph, pw, c)
        argmax = torch.full((k, ph, pw, c), -1, dtype=torch.long, device=features.device) if need_index else None
        lowest = torch.finfo(torch.float32).min  # the kernel starts from -FLT_MAX, also for float64
        channel = torch.arange(c, device=features.device)
        empty = (h_hi <= h_lo)[:, :, None] | (w_hi <= w_lo)[:, None, :]  # [K, PH, PW]
        bounds = torch.stack([h_lo.amin(1), h_hi.amax(1), w_lo.amin(1), w_hi.amax(1)], 1).tolist()
        for i, (b, (r0, r1, c0, c1)) in enumerate(zip(batch.tolist(), bounds, strict=True)):
            if r1 <= r0 or c1 <= c0:
                continue
            crop = images[b, r0:r1, c0:c1]  # [hr, wr, C], a view
            col_max, col_at, col_pos = _bin_max(crop, w_lo[i], w_hi[i], c0, 1, need_index)  # [hr, PW, C]
            best, row_at, row_pos = _bin_max(col_max, h_lo[i], h_hi[i], r0, 0, need_index)  # [PH, PW, C]
            hit = empty[i, :, :, None]
            found = (best > lowest) & ~hit
            out[i] = torch.where(hit, 0.0, torch.where(found, best, lowest))
            if need_index:
                rows = row_pos.gather(1, row_at.view(ph, -1)).view(ph, pw, c)  # crop row of each maximum
                col_at = col_at.gather(0, rows).transpose(0, 1).reshape(pw, -1)
                cols = col_pos.gather(1, col_at).view(pw, ph, c).transpose(0, 1)
                flat = ((b * c + channel) * height + rows + r0) * width + cols + c0
                argmax[i] = torch.where(found, flat, -1)
        ctx.save_for_backward(argmax)
        ctx.shape = features.shape
        return out.permute(0, 3, 1, 2).contiguous()  # NCHW memory, as torchvision's: .view() works

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (argmax,) = ctx.saved_tensors
        size = math.prod(ctx.shape)
        # Outputs without an arg-max (-1) send their gradient to one extra slot, dropped afterwards.
        flat = torch.where(argmax >= 0, argmax, size).reshape(-1)
        grad_features = grad_out.new_zeros(size + 1)
        grad_features.index_add_(0, flat, grad_out.permute(0, 2, 3, 1).reshape(-1))
        return grad_features[:size].view(ctx.shape), None


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module, torchvision.ops.RoIAlign's arguments and repr.

    ``forward(input, rois)``: Tensor[N, C, H, W] and Tensor[K, 5] or a list of Tensor[L_i, 4] → Tensor[K, C, PH, PW].
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False):
        super().__init__()
        _pair(output_size, "RoIAlign output_size")  # refused when built, not at the first batch
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")


class RoIPool(nn.Module):
    """:func:`roi_pool` as a module, torchvision.ops.RoIPool's arguments and repr.

    ``forward(input, rois)``: Tensor[N, C, H, W] and Tensor[K, 5] or a list of Tensor[L_i, 4] → Tensor[K, C, PH, PW].
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        _pair(output_size, "RoIPool output_size")
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
