"""The compiled decoder of the overfitted codecs (``coolchic``, ``lottery``), format 2.

It computes exactly the integers of the reference decoder (:mod:`.stream` over :mod:`.arm`,
:mod:`.networks` and :mod:`.fixedpoint`, which stays the specification and the test oracle), but
as a handful of numba-compiled loops instead of thousands of small torch calls:

* **latents**: one loop over every element of every grid in coding order (coarsest grid first,
  wavefront by wavefront, row by row): causal context, the ARM's fixed-point MLP, the scale index,
  the integer Laplace CDF of :mod:`.rans` searched from the predicted mean, and the rANS step;
* **upsampling**: each latent grid through its chain of 2x steps, rows then columns;
* **synthesis**: runs of 1x1 layers fused per pixel (nothing wider than the layer's output is
  stored), 3x3 layers on planar maps, then the output levels.

The arithmetic is the reference's: integers held in float64 below 2^52 (checked with the
reference's bounds, so sums are exact in any order, which is what lets the compiler vectorise
them), rounding shifts, table look-ups. Nothing depends on the thread count; the kernels hold no
global state and release the GIL, so a shard's items decode in parallel threads. torch is never
imported; the first call in a fresh environment compiles the kernels (numba caches them on disk
next to this module, or under ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import limits
from ..errors import BitstreamError
from . import rans
from .arch import (
    COARSE_OFFSETS,
    CONTEXT_RADIUS,
    LOG_SCALE_OFFSET,
    LOG_SCALE_STEPS,
    Architecture,
    context_offsets,
    parse_layers,
    wavefront_stride,
)
from .format import masks_of, network_shapes, parse_header, parse_param_ints, split_payload
from .intmath import (
    ACT_FRAC_BITS,
    EXACT_LIMIT,
    GELU_LIMIT,
    TANH_LIMIT,
    align_bias,
    gelu_table,
    pixel_coordinates,
    tanh_uint8_table,
)
from .randomnet import RANDOM_WEIGHT_FRAC_BITS, random_weights

#: Kernel status codes (the kernels report, the Python side raises).
_OK, _ARM_OVERFLOW, _TRUNCATED, _UNCLEAN_END, _BAD_START, _OVERFLOW = 0, 1, 2, 3, 4, 5
#: Zero border around each latent grid in the decoder's context buffer (the context radius).
PAD = CONTEXT_RADIUS
_SCALE_SHIFT = ACT_FRAC_BITS - 8  # log-scale at 2^-12 -> index at 1/256 (LOG_SCALE_STEPS)
_JIT = dict(cache=True, nogil=True, fastmath={"reassoc", "contract"})  # exact: every partial sum is an integer < 2^52

assert LOG_SCALE_STEPS == 256


@njit(inline="always", **_JIT)
def _round_shift(value, shift):
    if shift <= 0:
        return value * float(1 << -shift)
    return np.floor((value + float(1 << (shift - 1))) * (1.0 / float(1 << shift)))


#: Pixels a kernel processes together: planar blocks keep the innermost loops contiguous, so they
#: vectorise, and stay in the L2 cache (512 was the fastest of 64..512 on Kodak, AVX-512).
BLOCK = 512


@njit(inline="always", **_JIT)
def _dense_block(x, n_in, w, b, shift, n_out, y, n):
    """y[:n_out, :n] = round_shift(w @ x[:n_in, :n] + b, shift), skipping zero weights (LotteryCodec's
    masked ones). Exact: integers below 2^52 (the callers check the reference's bounds)."""
    for o in range(n_out):
        bias = b[o]
        for p in range(n):
            y[o, p] = bias
        for i in range(n_in):
            wi = w[o, i]
            if wi != 0.0:
                for p in range(n):
                    y[o, p] += wi * x[i, p]
        for p in range(n):
            y[o, p] = _round_shift(y[o, p], shift)


@njit(inline="always", **_JIT)
def _accumulate(x, n_in, w, col0, n_out, y, n):
    """y[:n_out, :n] += w[:, col0:col0 + n_in] @ x[:n_in, :n], skipping zero weights."""
    for o in range(n_out):
        for i in range(n_in):
            wi = w[o, col0 + i]
            if wi != 0.0:
                for p in range(n):
                    y[o, p] += wi * x[i, p]


@njit(inline="always", **_JIT)
def _bounds_ok(x, n_rows, n, w_rows, b_max, column_max):
    """The reference's bound (max |input| · max row sum |w| + max |bias| < 2^52), per column."""
    for p in range(n):
        column_max[p] = 0.0
    for i in range(n_rows):
        for p in range(n):
            column_max[p] = max(column_max[p], abs(x[i, p]))
    ok = True
    for p in range(n):
        ok = ok and column_max[p] * w_rows + b_max < EXACT_LIMIT
    return ok


# -- latents -------------------------------------------------------------------------------------------
@njit(**_JIT)
def _decode_latents(words, heights, widths, starts, offsets, coarse_offsets, stride,
                    hidden_w, hidden_b, hidden_shift, hidden_wrow, hidden_bmax,
                    out_w, out_b, out_shift, out_wrow, out_bmax,
                    bound, inverse, exp_table, values):
    """Every latent in coding order. Per wavefront: contexts and the ARM for all its elements at once
    (they do not depend on each other), then their symbols one by one through the rANS decoder."""
    n_words = words.shape[0]
    if n_words < 2 or words[1] >= (1 << 31):
        return _BAD_START
    state = words[0] | (words[1] << 32)
    if state < rans.RANS_L:
        return _BAD_START
    pos = 2
    n_ctx, n_coarse = offsets.shape[0], coarse_offsets.shape[0]
    c_all = n_ctx + n_coarse
    n_hidden = hidden_w.shape[0]
    n_grids = heights.shape[0]
    longest = 1
    for g in range(heights.shape[0]):
        longest = max(longest, heights[g])
    x = np.zeros((c_all, longest))
    y = np.zeros((c_all, longest))
    out = np.zeros((2, longest))
    column_max = np.zeros(longest)
    flat = np.zeros(longest, dtype=np.int64)
    # every grid again, zero-padded by PAD on each side and at the activation scale: contexts are
    # then plain loads at fixed offsets (positions outside a grid read the padding's zeros)
    padded_starts = np.zeros(n_grids + 1, dtype=np.int64)
    for g in range(n_grids):
        padded_starts[g + 1] = padded_starts[g] + (heights[g] + 2 * PAD) * (widths[g] + 2 * PAD)
    padded = np.zeros(padded_starts[n_grids])
    padded_at = np.zeros(longest, dtype=np.int64)
    deltas = np.zeros(n_ctx, dtype=np.int64)
    coarse_deltas = np.zeros(max(n_coarse, 1), dtype=np.int64)
    means = np.zeros(longest, dtype=np.int64)
    inverses = np.zeros(longest, dtype=np.int64)
    guesses = np.zeros(longest, dtype=np.int64)
    guess_low = np.zeros(longest, dtype=np.int64)
    guess_high = np.zeros(longest, dtype=np.int64)
    mask = rans.TOTAL - 1
    half = 1 << (ACT_FRAC_BITS - 1)
    one = float(1 << ACT_FRAC_BITS)
    for g in range(n_grids - 1, -1, -1):
        h, w, base = heights[g], widths[g], starts[g]
        coarse = g + 1 < n_grids
        pw, pbase = w + 2 * PAD, padded_starts[g]
        cpw = widths[g + 1] + 2 * PAD if coarse else 0
        cpbase = padded_starts[g + 1] if coarse else 0
        for j in range(n_ctx):
            deltas[j] = offsets[j, 0] * pw + offsets[j, 1]
        for j in range(n_coarse):
            coarse_deltas[j] = coarse_offsets[j, 0] * cpw + coarse_offsets[j, 1]
        for wave in range(w + stride * (h - 1)):
            r_hi = min(h - 1, wave // stride)
            r_lo = max(0, -((w - 1 - wave) // stride))  # ceil((wave - (w - 1)) / stride)
            n = r_hi - r_lo + 1
            for e in range(n):  # element e of the wavefront: row r_lo + e
                r = r_lo + e
                c = wave - stride * r
                flat[e] = base + r * w + c
                centre = pbase + (r + PAD) * pw + c + PAD
                padded_at[e] = centre
                for j in range(n_ctx):
                    x[j, e] = padded[centre + deltas[j]]
                if coarse:
                    coarse_centre = cpbase + (r // 2 + PAD) * cpw + c // 2 + PAD
                    for j in range(n_coarse):
                        x[n_ctx + j, e] = padded[coarse_centre + coarse_deltas[j]]
                else:
                    for j in range(n_coarse):
                        x[n_ctx + j, e] = 0.0
            # the ARM: residual ReLU layers, then the (mean, log-scale) layer
            for layer in range(n_hidden):
                if not _bounds_ok(x, c_all, n, hidden_wrow[layer], hidden_bmax[layer], column_max):
                    return _ARM_OVERFLOW
                _dense_block(x, c_all, hidden_w[layer], hidden_b[layer], hidden_shift[layer], c_all, y, n)
                for o in range(c_all):
                    for e in range(n):
                        x[o, e] = max(y[o, e] + x[o, e], 0.0)
            if not _bounds_ok(x, c_all, n, out_wrow, out_bmax, column_max):
                return _ARM_OVERFLOW
            _dense_block(x, c_all, out_w, out_b, out_shift, 2, out, n)
            # each element's model and the slot range of the symbol nearest its mean, before the
            # rANS loop (they do not depend on the coder's state, so this part pipelines)
            for e in range(n):
                mu = np.int64(out[0, e])
                log_scale = out[1, e] - LOG_SCALE_OFFSET * one
                k = np.int64(min(max(_round_shift(log_scale, _SCALE_SHIFT), float(rans.SCALE_INDEX_MIN)),
                                 float(rans.SCALE_INDEX_MAX)))
                inv = inverse[k - rans.SCALE_INDEX_MIN]
                s = min(max((mu + half) >> ACT_FRAC_BITS, -bound), bound)
                means[e], inverses[e], guesses[e] = mu, inv, s
                guess_low[e] = rans.laplace_cum_jit(s, mu, inv, bound, exp_table)
                guess_high[e] = rans.laplace_cum_jit(s + 1, mu, inv, bound, exp_table)
            for e in range(n):
                # the symbol whose slot range holds the state's slot: nearly always the guess
                slot = state & mask
                s, low, high = guesses[e], guess_low[e], guess_high[e]
                if not low <= slot < high:
                    mu, inv = means[e], inverses[e]
                    while low > slot:
                        s -= 1
                        high = low
                        low = rans.laplace_cum_jit(s, mu, inv, bound, exp_table)
                    while high <= slot:
                        s += 1
                        low = high
                        high = rans.laplace_cum_jit(s + 1, mu, inv, bound, exp_table)
                state = (high - low) * (state >> rans.PRECISION) + slot - low
                if state < rans.RANS_L:
                    if pos >= n_words:
                        return _TRUNCATED
                    state = (state << 32) | words[pos]
                    pos += 1
                values[flat[e]] = s
                padded[padded_at[e]] = float(s) * one
    if state != rans.RANS_L or pos != n_words:
        return _UNCLEAN_END
    return _OK


def _dense_arrays(params, weight: str, bias: str | None):
    """A fixed-point layer as the kernels take it: weights, bias aligned to the accumulator, the
    output shift, and the reference's bound terms (max row sum of |w|, max |bias|)."""
    w, we, _ = params[weight]
    w = w.astype(np.float64)
    if bias is None:
        b = np.zeros(w.shape[0])
    else:
        bi, be, _ = params[bias]
        b = align_bias(bi.astype(np.float64), be, ACT_FRAC_BITS + we)
    w_rows = float(np.abs(w).sum(axis=1).max()) if w.size else 0.0
    b_max = float(np.abs(b).max()) if b.size else 0.0
    return np.ascontiguousarray(w), np.ascontiguousarray(b), int(we), w_rows, b_max


def decode_latents(data: bytes, arch: Architecture, height: int, width: int, bound: int, params) -> np.ndarray:
    """Format-2 latent payload -> every grid's integers in one flat int64 buffer (grid after grid)."""
    shapes = arch.grid_shapes(height, width)
    sizes = [h * w for h, w in shapes]
    values = np.zeros(sum(sizes), dtype=np.int64)
    if bound == 0:
        if data:
            raise BitstreamError("latent payload present although every latent is zero")
        return values
    if len(data) % 4:
        raise BitstreamError("latent payload is not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype="<u4").astype(np.int64)
    c = arch.arm_context + arch.arm_coarse
    hidden = [_dense_arrays(params, f"arm.hidden_weight.{i}", f"arm.hidden_bias.{i}") for i in range(arch.arm_hidden)]
    out_w, out_b, out_shift, out_wrow, out_bmax = _dense_arrays(params, "arm.out_weight", "arm.out_bias")
    status = _decode_latents(
        words, np.array([h for h, _ in shapes], dtype=np.int64), np.array([w for _, w in shapes], dtype=np.int64),
        np.cumsum([0] + sizes[:-1]).astype(np.int64),
        np.array(context_offsets(arch.arm_context), dtype=np.int64).reshape(-1, 2),
        np.array(COARSE_OFFSETS[: arch.arm_coarse], dtype=np.int64).reshape(-1, 2),
        wavefront_stride(arch.arm_context),
        np.array([h[0] for h in hidden]).reshape(-1, c, c), np.array([h[1] for h in hidden]).reshape(-1, c),
        np.array([h[2] for h in hidden], dtype=np.int64), np.array([h[3] for h in hidden], dtype=np.float64),
        np.array([h[4] for h in hidden], dtype=np.float64),
        out_w, out_b, out_shift, out_wrow, out_bmax, bound, rans.inverse_scales(), rans.half_exp_table(), values)
    if status == _ARM_OVERFLOW:
        raise BitstreamError("entropy model out of range (ARM: integer range exceeds exact float64 arithmetic)")
    if status in (_BAD_START, _TRUNCATED):
        raise BitstreamError("latent payload does not decode (rANS stream "
                             + ("starts with an impossible state)" if status == _BAD_START else "ends before the last symbol)"))
    if status == _UNCLEAN_END:
        raise BitstreamError("latent payload does not end where its last element does (damaged stream)")
    return values


# -- upsampling ------------------------------------------------------------------------------------------
@njit(inline="always", **_JIT)
def _tap_plan(n, out_n, taps):
    """For each output index of a 2x step: its four source indices (replicate padding) and weights;
    the even output 2m weighs x[m-2..m+1] by (a, c, d, b), the odd one x[m-1..m+2] by (b, d, c, a)."""
    a, b, c, d = taps[0], taps[1], taps[2], taps[3]
    index = np.empty((4, out_n), dtype=np.int64)
    weight = np.empty((4, out_n))
    for i in range(out_n):
        m = i >> 1
        first = m - 2 if i & 1 == 0 else m - 1
        for t in range(4):
            index[t, i] = min(max(first + t, 0), n - 1)
        if i & 1 == 0:
            weight[0, i], weight[1, i], weight[2, i], weight[3, i] = a, c, d, b
        else:
            weight[0, i], weight[1, i], weight[2, i], weight[3, i] = b, d, c, a
    return index, weight


@njit(**_JIT)
def _upsample(src, taps, shift, out_h, out_w):
    """One 2x step of one channel: rows, round, columns, round (both passes run along rows)."""
    h, w = src.shape
    rows = np.empty((out_h, w))
    index, weight = _tap_plan(h, out_h, taps)
    for i in range(out_h):
        i0, i1, i2, i3 = index[0, i], index[1, i], index[2, i], index[3, i]
        t0, t1, t2, t3 = weight[0, i], weight[1, i], weight[2, i], weight[3, i]
        for col in range(w):
            rows[i, col] = _round_shift(t0 * src[i0, col] + t1 * src[i1, col] + t2 * src[i2, col] + t3 * src[i3, col], shift)
    out = np.empty((out_h, out_w))
    index, weight = _tap_plan(w, out_w, taps)
    for i in range(out_h):
        for j in range(out_w):
            out[i, j] = _round_shift(weight[0, j] * rows[i, index[0, j]] + weight[1, j] * rows[i, index[1, j]]
                                     + weight[2, j] * rows[i, index[2, j]] + weight[3, j] * rows[i, index[3, j]], shift)
    return out


def upsampled_stack(values: np.ndarray, arch: Architecture, height: int, width: int, params) -> np.ndarray:
    """Latent integers -> (L, H, W) float64 stack at the activation scale (channel i: grid i)."""
    shapes = arch.grid_shapes(height, width)
    taps_all, exp, _ = params["upsampler.taps"]
    taps_all = taps_all.astype(np.float64)
    taps_sum = [float(np.abs(t).sum()) for t in taps_all]
    n = len(shapes)
    stack = np.empty((n, height, width))
    pos = 0
    for g, (h, w) in enumerate(shapes):
        plane = values[pos : pos + h * w].reshape(h, w).astype(np.float64) * float(1 << ACT_FRAC_BITS)
        pos += h * w
        for step in range(n - 1 - g, n - 1):  # the steps the reference applies to this channel
            kernel = 0 if arch.shared_upsampling else step
            if not float(np.abs(plane).max()) * taps_sum[kernel] + 1 < EXACT_LIMIT:
                raise BitstreamError("network out of range (upsampling: integer range exceeds exact float64 arithmetic)")
            out_h, out_w = shapes[n - 2 - step]
            plane = _upsample(np.ascontiguousarray(plane), taps_all[kernel], exp, out_h, out_w)
        stack[g] = plane
    return stack


# -- synthesis -------------------------------------------------------------------------------------------
@njit(**_JIT)
def _pointwise_run(inp, ws, bs, shifts, n_in, n_out, residual, relu, w_rows, b_max, out):
    """Consecutive 1x1 layers fused over blocks of pixels: inp (C0, N) -> out (C_last, N). The first
    layer's bound was checked on the whole input map; later ones are checked per pixel."""
    n_layers, width = ws.shape[0], ws.shape[1]
    n_px = inp.shape[1]
    x = np.zeros((max(width, inp.shape[0]), BLOCK))
    y = np.zeros((width, BLOCK))
    column_max = np.zeros(BLOCK)
    for start in range(0, n_px, BLOCK):
        n = min(BLOCK, n_px - start)
        for i in range(n_in[0]):
            for p in range(n):
                x[i, p] = inp[i, start + p]
        for layer in range(n_layers):
            if layer > 0 and not _bounds_ok(x, n_in[layer], n, w_rows[layer], b_max[layer], column_max):
                return _OVERFLOW
            _dense_block(x, n_in[layer], ws[layer], bs[layer], shifts[layer], n_out[layer], y, n)
            for o in range(n_out[layer]):
                for p in range(n):
                    v = y[o, p] + x[o, p] if residual[layer] else y[o, p]
                    x[o, p] = max(v, 0.0) if relu[layer] else v
        for o in range(n_out[n_layers - 1]):
            for p in range(n):
                out[o, start + p] = x[o, p]
    return _OK


@njit(inline="always", **_JIT)
def _gelu(v, table):
    """The reference's GELU: the table inside [-limit, limit], identity above, zero below (written
    without branches so that the loops around it vectorise into gathers)."""
    inside = table[np.int64(min(max(v, -float(GELU_LIMIT)), float(GELU_LIMIT))) + GELU_LIMIT]
    return v if v > GELU_LIMIT else (0.0 if v < -GELU_LIMIT else inside)


@njit(**_JIT)
def _conv3x3(padded, weight, bias, shift, residual, relu, gelu, gelu_values, out):
    """3x3 layer on planar maps: padded (C, H+2, W+2) (replicate padding) -> out (C_out, H, W);
    window layout (dy * 3 + dx) * C + c, as the reference's patches. The residual adds the input;
    ``gelu`` applies the GELU table after it (LotteryCodec's modulation), ``relu`` a ReLU (Cool-chic)."""
    c_in = padded.shape[0]
    h, w = padded.shape[1] - 2, padded.shape[2] - 2
    c_out = weight.shape[0]
    acc = np.empty(w)
    for r in range(h):
        for o in range(c_out):
            for col in range(w):
                acc[col] = bias[o]
            for dy in range(3):
                for dx in range(3):
                    for ch in range(c_in):
                        wv = weight[o, (dy * 3 + dx) * c_in + ch]
                        if wv != 0.0:
                            for col in range(w):
                                acc[col] += wv * padded[ch, r + dy, col + dx]
            for col in range(w):
                v = _round_shift(acc[col], shift)
                if residual:
                    v += padded[o, r + 1, col + 1]
                if relu:
                    v = max(v, 0.0)
                if gelu:
                    v = _gelu(v, gelu_values)
                out[o, r, col] = v


@njit(**_JIT)
def _coolchic_output(x, stack, sw, sb, s_shift, out):
    """Final levels: round(255 · (x + stabiliser(stack))) at the activation scale, clamped to 0..255."""
    n_px = x.shape[1]
    n_in = stack.shape[0]
    block = np.empty((n_in, BLOCK))
    y = np.empty((3, BLOCK))
    for start in range(0, n_px, BLOCK):
        n = min(BLOCK, n_px - start)
        for i in range(n_in):
            for p in range(n):
                block[i, p] = stack[i, start + p]
        _dense_block(block, n_in, sw, sb, s_shift, 3, y, n)
        for o in range(3):
            for p in range(n):
                level = _round_shift((x[o, start + p] + y[o, p]) * 255.0, ACT_FRAC_BITS)
                out[start + p, o] = np.uint8(min(max(level, 0.0), 255.0))


def _check(x: np.ndarray, w_rows: float, b_max: float, what: str) -> None:
    """The reference's bound on a whole input map (fixedpoint.linear)."""
    if not (float(np.abs(x).max()) if x.size else 0.0) * w_rows + b_max < EXACT_LIMIT:
        raise BitstreamError(f"network out of range ({what}: integer range exceeds exact float64 arithmetic)")


def _run(inp: np.ndarray, layers: list[tuple], residual: list[bool], relu: list[bool], what: str) -> np.ndarray:
    """Fused 1x1 layers over a planar (C, N) map."""
    _check(inp, layers[0][3], layers[0][4], what)
    width = max(max(l[0].shape) for l in layers)
    ws = np.zeros((len(layers), width, width))
    bs = np.zeros((len(layers), width))
    for i, (w, b, *_rest) in enumerate(layers):
        ws[i, : w.shape[0], : w.shape[1]] = w
        bs[i, : b.shape[0]] = b
    n_out = layers[-1][0].shape[0]
    out = np.empty((n_out, inp.shape[1]))
    status = _pointwise_run(np.ascontiguousarray(inp), ws, bs, np.array([l[2] for l in layers], dtype=np.int64),
                            np.array([l[0].shape[1] for l in layers], dtype=np.int64),
                            np.array([l[0].shape[0] for l in layers], dtype=np.int64),
                            np.array(residual), np.array(relu),
                            np.array([l[3] for l in layers]), np.array([l[4] for l in layers]), out)
    if status != _OK:
        raise BitstreamError(f"network out of range ({what}: integer range exceeds exact float64 arithmetic)")
    return out


def _conv(inp: np.ndarray, layer: tuple, residual: bool, relu: bool, gelu: bool, what: str) -> np.ndarray:
    w, b, shift, w_rows, b_max = layer
    _check(inp, w_rows, b_max, what)
    out = np.empty((w.shape[0],) + inp.shape[1:])
    _conv3x3(np.pad(inp, ((0, 0), (1, 1), (1, 1)), mode="edge"), w, b, shift, residual, relu, gelu, gelu_table(), out)
    return out


def coolchic_synthesis(stack: np.ndarray, arch: Architecture, params) -> np.ndarray:
    l, h, w = stack.shape
    flat = stack.reshape(l, h * w)
    x = flat
    specs = parse_layers(arch.synthesis)
    i = 0
    while i < len(specs):
        if specs[i].kernel == 3:
            layer = _dense_arrays(params, f"synthesis.weights.{i}", f"synthesis.biases.{i}")
            x = _conv(x.reshape(-1, h, w), layer, specs[i].residual, specs[i].relu, False,
                      f"synthesis layer {i}").reshape(-1, h * w)
            i += 1
            continue
        j = i
        while j < len(specs) and specs[j].kernel == 1:
            j += 1
        layers = [_dense_arrays(params, f"synthesis.weights.{k}", f"synthesis.biases.{k}") for k in range(i, j)]
        x = _run(x, layers, [s.residual for s in specs[i:j]], [s.relu for s in specs[i:j]], f"synthesis layer {i}")
        i = j
    sw, sb, s_shift, s_rows, s_bmax = _dense_arrays(params, "synthesis.stabiliser_weight", "synthesis.stabiliser_bias")
    _check(flat, s_rows, s_bmax, "synthesis stabiliser")
    out = np.empty((h * w, 3), dtype=np.uint8)
    _coolchic_output(np.ascontiguousarray(x), flat, sw, sb, s_shift, out)
    return out.reshape(h, w, 3)


@njit(**_JIT)
def _lottery_pixels(stack, o1, o2, o3, coords, m0w, m0b, m0_shift, m1w, m1b, m1_shift, m1_rows, m1_bmax,
                    r0, r1, r2, r3, r_rows, gelu_values, tanh_values, first_pass, out):
    """LotteryCodec over blocks of pixels. First pass: o0 = gelu(lin(stack)), o1 = gelu(lin(o0)) ->
    ``o1``. Second pass (after the two 3x3 modulation layers): o0 again, then the masked random MLP
    over the pixels' coordinates; layer l reads [x, mods[:width_l]] with mods = [o3, o2, o1, o0]
    (widths 6, 9, 9 + C), as two products (the concatenation is never built)."""
    n_px = stack.shape[1]
    n_in = stack.shape[0]
    mod = m0w.shape[0]
    widest = max(r0.shape[0], r1.shape[0], r2.shape[0], 3)
    block = np.empty((n_in, BLOCK))
    mods = np.empty((9 + mod, BLOCK))  # rows: o3, o2, o1, o0
    x = np.empty((widest, BLOCK))
    y = np.empty((widest, BLOCK))
    coord_block = np.empty((2, BLOCK))
    no_bias = np.zeros(max(widest, mod))
    column_max = np.zeros(BLOCK)
    x_max = np.zeros(BLOCK)
    prefix_max = np.zeros((3, BLOCK))  # max |mods| over the first 6, 9 and 9 + C rows
    for start in range(0, n_px, BLOCK):
        n = min(BLOCK, n_px - start)
        for i in range(n_in):
            for p in range(n):
                block[i, p] = stack[i, start + p]
        o0 = mods[9:]
        _dense_block(block, n_in, m0w, m0b, m0_shift, mod, o0, n)
        for o in range(mod):
            for p in range(n):
                o0[o, p] = _gelu(o0[o, p], gelu_values)
        if first_pass:
            if not _bounds_ok(o0, mod, n, m1_rows, m1_bmax, column_max):
                return _OVERFLOW
            _dense_block(o0, mod, m1w, m1b, m1_shift, 3, y, n)
            for o in range(3):
                for p in range(n):
                    o1[o, start + p] = _gelu(y[o, p], gelu_values)
            continue
        for c in range(3):
            for p in range(n):
                mods[c, p] = o3[c, start + p]
                mods[3 + c, p] = o2[c, start + p]
                mods[6 + c, p] = o1[c, start + p]
        for p in range(n):
            prefix_max[0, p] = 0.0
        for i in range(9 + mod):
            row = 0 if i < 6 else (1 if i < 9 else 2)
            if i == 6 or i == 9:
                for p in range(n):
                    prefix_max[row, p] = prefix_max[row - 1, p]
            for p in range(n):
                prefix_max[row, p] = max(prefix_max[row, p], abs(mods[i, p]))
        # random layer 0 on the coordinates (no bias), then layers 1..3
        for p in range(n):
            coord_block[0, p] = coords[start + p, 0]
            coord_block[1, p] = coords[start + p, 1]
        n_x = r0.shape[0]
        _dense_block(coord_block, 2, r0, no_bias, RANDOM_WEIGHT_FRAC_BITS, n_x, y, n)
        for layer in range(1, 4):
            rw = r1 if layer == 1 else (r2 if layer == 2 else r3)
            for i in range(n_x):
                for p in range(n):
                    x[i, p] = _gelu(y[i, p], gelu_values)
            width = rw.shape[1] - n_x
            _bounds_ok(x, n_x, n, 0.0, 0.0, x_max)
            for p in range(n):
                if not max(x_max[p], prefix_max[layer - 1, p]) * r_rows[layer] < EXACT_LIMIT:
                    return _OVERFLOW
            n_out = rw.shape[0]
            for o in range(n_out):
                for p in range(n):
                    y[o, p] = 0.0
            _accumulate(x, n_x, rw, 0, n_out, y, n)
            _accumulate(mods, width, rw, n_x, n_out, y, n)
            for o in range(n_out):
                for p in range(n):
                    y[o, p] = _round_shift(y[o, p], RANDOM_WEIGHT_FRAC_BITS)
            n_x = n_out
        for o in range(3):
            for p in range(n):
                v = min(max(y[o, p], -float(TANH_LIMIT)), float(TANH_LIMIT))
                out[start + p, o] = np.uint8(tanh_values[np.int64(v) + TANH_LIMIT])
    return _OK


def lottery_synthesis(stack: np.ndarray, arch: Architecture, params, masks: list[np.ndarray], seed: int) -> np.ndarray:
    l, h, w = stack.shape
    flat = np.ascontiguousarray(stack.reshape(l, h * w))
    shape = arch.lottery_shape
    m0 = _dense_arrays(params, "synthesis.mod_weights.0", "synthesis.mod_biases.0")
    m1 = _dense_arrays(params, "synthesis.mod_weights.1", "synthesis.mod_biases.1")
    m2 = _dense_arrays(params, "synthesis.mod_weights.2", "synthesis.mod_biases.2")
    m3 = _dense_arrays(params, "synthesis.mod_weights.3", "synthesis.mod_biases.3")
    _check(flat, m0[3], m0[4], "modulation layer 0")
    random = [np.ascontiguousarray((rw * m).astype(np.float64))
              for rw, m in zip(random_weights(shape.layer_shapes, seed), masks)]
    random_rows = np.array([float(np.abs(r).sum(axis=1).max()) if r.size else 0.0 for r in random])
    coords = pixel_coordinates(h, w)
    _check(coords, random_rows[0], 0.0, "random layer 0")
    o1 = np.empty((3, h * w))
    out = np.empty((h * w, 3), dtype=np.uint8)
    gelu_values, tanh_values = gelu_table(), tanh_uint8_table()

    def pixels(o1, o2, o3, first):
        status = _lottery_pixels(flat, o1, o2, o3, coords, m0[0], m0[1], m0[2], m1[0], m1[1], m1[2], m1[3], m1[4],
                                 *random, random_rows, gelu_values, tanh_values, first, out)
        if status != _OK:
            raise BitstreamError("network out of range (LotteryCodec synthesis: integer range exceeds exact float64 "
                                 "arithmetic)")

    pixels(o1, o1, o1, True)
    o2 = _conv(o1.reshape(3, h, w), m2, True, False, True, "modulation layer 2")
    o3 = _conv(o2, m3, True, False, True, "modulation layer 3")
    pixels(o1, o2.reshape(3, -1), o3.reshape(3, -1), False)
    return out.reshape(h, w, 3)


# -- the whole decoder -------------------------------------------------------------------------------------
def memory_bytes(arch: Architecture, height: int, width: int) -> int:
    """Peak memory of a compiled decode: the latents (int64) and their padded float64 copy, the
    float64 stack, the widest maps the synthesis materialises (a 3x3 layer's padded input and its
    output), the output."""
    elements = sum((h + 2 * PAD) * (w + 2 * PAD) for h, w in arch.grid_shapes(height, width))
    pixels = height * width
    if arch.kind == "coolchic":
        specs = parse_layers(arch.synthesis)
        stored = [arch.n_grids] + [s.out_channels for i, s in enumerate(specs)
                                   if s.kernel == 3 or i + 1 == len(specs) or specs[i + 1].kernel == 3]
        maps = 3 * max(stored)
    else:
        maps = 9 + 2 + 3  # o1, o2, o3, coordinates, a padded copy
    return 16 * elements + 8 * pixels * (2 * arch.n_grids + maps) + 3 * pixels


def decode(kind: str, header: bytes, payload: bytes, width: int, height: int) -> np.ndarray:
    """One overfitted-codec payload -> (H, W, 3) uint8, equal to :func:`.stream.decode`'s pixels."""
    h = parse_header(kind, header)
    if h.version == 1:  # constriction's float range coder: only the reference decodes it
        from . import stream

        return stream.decode(kind, header, payload, width, height)
    arch = h.arch
    limits.check_memory(memory_bytes(arch, height, width), f"a {width}x{height} {kind} image")
    nn_data, mask_data, latent_data = split_payload(payload, h.nn_bytes, h.mask_bytes)
    params = parse_param_ints(nn_data, network_shapes(arch))
    masks = masks_of(kind, arch, mask_data)
    values = decode_latents(latent_data, arch, height, width, h.bound, params)
    stack = upsampled_stack(values, arch, height, width, params)
    if kind == "coolchic":
        return coolchic_synthesis(stack, arch, params)
    return lottery_synthesis(stack, arch, params, masks, h.seed)
