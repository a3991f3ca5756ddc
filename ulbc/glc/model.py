"""The GLC image network.

Module and parameter names follow the authors' release (``enc.enc_1.0.block.0.conv1.0.weight``,
``vqgan.encoder.blocks.3.norm1.weight``, ``z_vq.embedding.weight``, ...), so that their checkpoint
loads with ``strict=True``; ``ulbc/data/glc_image_manifest.json`` lists every name and shape of the
released configuration, taken from the authors' code, and a test holds this module to it.

At inference the VQ-VAE's attention runs in non-overlapping ``attn_patch`` x ``attn_patch``
latent patches (as the release evaluates it), so memory grows with the image, not its square.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config import GLCConfig

#: Checkpoint keys of the training-only code-prediction transformers (not built for inference).
CODE_PREDICTION_PREFIXES = ("code_pred_loss.", "code_pred_pix_loss.")
#: Smallest quantisation step of the context model (the release clamps there).
MIN_QUANT_STEP = 0.5


# -- latent transform coder blocks (DCVC family) -------------------------------------------------------
class DepthConv(nn.Module):
    """1x1 conv + leaky ReLU, 3x3 depth-wise conv, 1x1 conv; residual (1x1 adaptor when widths differ)."""

    def __init__(self, in_ch: int, out_ch: int, slope: float = 0.01):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, in_ch, 1), nn.LeakyReLU(slope))
        self.depth_conv = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1)
        self.adaptor = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x):
        skip = x if self.adaptor is None else self.adaptor(x)
        return skip + self.conv2(self.depth_conv(self.conv1(x)))


class GatedDepthConv(nn.Module):
    """A depth-wise branch gated by a 1x1 branch (their ``DepthConv2``); residual."""

    def __init__(self, in_ch: int, out_ch: int, slope: float = 0.01):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.LeakyReLU(slope),
                                   nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch))
        self.conv2 = nn.Conv2d(in_ch, out_ch, 1)
        self.out_conv = nn.Conv2d(out_ch, out_ch, 1)
        self.adaptor = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x):
        skip = x if self.adaptor is None else self.adaptor(x)
        return skip + self.out_conv(self.conv1(x) * self.conv2(x))


class ConvFFN(nn.Module):
    """Gated point-wise feed-forward (expansion 2, leaky-ReLU gate); residual."""

    def __init__(self, channels: int, slope: float = 0.1):
        super().__init__()
        hidden = 2 * channels
        self.conv = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_out = nn.Conv2d(hidden, channels, 1)
        self.relu = nn.LeakyReLU(slope)

    def forward(self, x):
        value, gate = self.conv(x).chunk(2, 1)
        return x + self.conv_out(value * self.relu(gate))


class DepthConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, gated: bool = False):
        super().__init__()
        first = GatedDepthConv(in_ch, out_ch) if gated else DepthConv(in_ch, out_ch)
        self.block = nn.Sequential(first, ConvFFN(out_ch))

    def forward(self, x):
        return self.block(x)


def _subpixel(in_ch: int, out_ch: int, factor: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch * factor**2, 1), nn.PixelShuffle(factor))


class ResidualBlockUpsample(nn.Module):
    """Sub-pixel up-sampling residual block (CompressAI's, with 1x1 sub-pixel convolutions)."""

    def __init__(self, in_ch: int, out_ch: int, factor: int = 2):
        super().__init__()
        self.subpel_conv = _subpixel(in_ch, out_ch, factor)
        self.leaky_relu = nn.LeakyReLU()
        self.conv = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.leaky_relu2 = nn.LeakyReLU(0.1)
        self.upsample = _subpixel(in_ch, out_ch, factor)

    def forward(self, x):
        out = self.leaky_relu2(self.conv(self.leaky_relu(self.subpel_conv(x))))
        return out + self.upsample(x)


class ScaledTransform(nn.Module):
    """Two gated blocks, a per-channel scale (the rate point's), two more: GLC's enc and dec."""

    def __init__(self, channels: int, first: str, second: str):
        super().__init__()
        self.first, self.second = first, second
        for name in (first, second):
            self.add_module(name, nn.Sequential(DepthConvBlock(channels, channels, gated=True),
                                                DepthConvBlock(channels, channels, gated=True)))

    def forward(self, x, scale):
        return getattr(self, self.second)(getattr(self, self.first)(x) * scale)


# -- the VQ-VAE ----------------------------------------------------------------------------------------
def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_out = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock(nn.Module):
    """Single-head spatial self-attention; at inference within ``patch`` x ``patch`` tiles."""

    def __init__(self, channels: int, groups: int, patch: int):
        super().__init__()
        self.patch = patch
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    @staticmethod
    def _attend(q, k, v):
        b, c, h, w = q.shape
        q, k, v = (t.reshape(b, c, h * w) for t in (q, k, v))
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c**-0.5, dim=2)  # (b, query, key)
        return torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        if self.training:
            out = self._attend(q, k, v)
        else:
            out = torch.zeros_like(x)
            step = self.patch
            for top in range(0, x.shape[2], step):
                for left in range(0, x.shape[3], step):
                    tile = (slice(None), slice(None), slice(top, top + step), slice(left, left + step))
                    out[tile] = self._attend(q[tile], k[tile], v[tile])
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class VQEncoder(nn.Module):
    def __init__(self, cfg: GLCConfig):
        super().__init__()
        g, nf, mult = cfg.norm_groups, cfg.vq_nf, cfg.vq_ch_mult
        blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, padding=1)]
        resolution, width = cfg.vq_img_size, nf
        for level, m in enumerate(mult):
            for _ in range(cfg.vq_res_blocks):
                blocks.append(ResBlock(width, nf * m, g))
                width = nf * m
                if resolution in cfg.vq_attn_resolutions:
                    blocks.append(AttnBlock(width, g, cfg.attn_patch))
            if level != len(mult) - 1:
                blocks.append(Downsample(width))
                resolution //= 2
        blocks += [ResBlock(width, width, g), AttnBlock(width, g, cfg.attn_patch), ResBlock(width, width, g),
                   _norm(width, g), Swish(), nn.Conv2d(width, cfg.emb_dim, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)
        self.quant_conv = nn.Conv2d(cfg.emb_dim, cfg.emb_dim, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.quant_conv(x)


class VQGenerator(nn.Module):
    """The VQ-VAE decoder (one more residual block per level than the encoder, as released)."""

    def __init__(self, cfg: GLCConfig):
        super().__init__()
        g, nf, mult = cfg.norm_groups, cfg.vq_nf, cfg.vq_ch_mult
        width = nf * mult[-1]
        resolution = cfg.vq_img_size // 2 ** (len(mult) - 1)
        self.post_quant_conv = nn.Conv2d(cfg.emb_dim, cfg.emb_dim, 1)
        blocks: list[nn.Module] = [nn.Conv2d(cfg.emb_dim, width, 3, padding=1), ResBlock(width, width, g),
                                   AttnBlock(width, g, cfg.attn_patch), ResBlock(width, width, g)]
        for level in reversed(range(len(mult))):
            for _ in range(cfg.vq_res_blocks + 1):
                blocks.append(ResBlock(width, nf * mult[level], g))
                width = nf * mult[level]
                if resolution in cfg.vq_attn_resolutions:
                    blocks.append(AttnBlock(width, g, cfg.attn_patch))
            if level != 0:
                blocks.append(Upsample(width))
                resolution *= 2
        blocks += [_norm(width, g), Swish(), nn.Conv2d(width, 3, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        x = self.post_quant_conv(x)
        for block in self.blocks:
            x = block(x)
        return x


class Codebook(nn.Module):
    """Nearest-neighbour vector quantiser over ``embedding.weight`` (codebook_size x emb_dim)."""

    def __init__(self, size: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / size, 1.0 / size)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 index of the nearest code of each position of z (B, C, H, W)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = self.embedding.weight
        distance = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        return distance.argmin(1).reshape(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) codes of (B, H, W) indices."""
        return self.embedding.weight[indices].permute(0, 3, 1, 2).contiguous()

    def forward(self, z):
        """Straight-through quantisation for training: (z_q, codebook + commitment loss, indices)."""
        idx = self.indices(z)
        z_q = self.lookup(idx)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        return z + (z_q - z).detach(), loss, idx


class VQAutoEncoder(nn.Module):
    def __init__(self, cfg: GLCConfig):
        super().__init__()
        self.encoder = VQEncoder(cfg)
        self.quantize = Codebook(cfg.codebook_size, cfg.emb_dim)
        self.generator = VQGenerator(cfg)


# -- code prediction (training only) -------------------------------------------------------------------
class TransformerLayer(nn.Module):
    """Pre-norm self-attention + GELU MLP (CodeFormer's layer), positions added to queries and keys."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x, pos):
        h = self.norm1(x)
        x = x + self.self_attn(h + pos, h + pos, value=h)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class CodePredictor(nn.Module):
    """Predicts the VQ code index of the original image at each latent position from y-hat."""

    def __init__(self, cfg: GLCConfig):
        super().__init__()
        dim = cfg.code_pred_dim
        self.position_emb = nn.Parameter(torch.zeros(cfg.code_pred_positions, dim))
        self.feat_emb = nn.Linear(cfg.emb_dim, dim)
        self.ft_layers = nn.Sequential(*[TransformerLayer(dim, cfg.code_pred_heads, 2 * dim)
                                         for _ in range(cfg.code_pred_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, cfg.codebook_size, bias=False))

    def forward(self, y_hat):
        """Logits (B, H*W, codebook_size); H*W must equal ``code_pred_positions``."""
        tokens = y_hat.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        if tokens.shape[0] != self.position_emb.shape[0]:
            raise ValueError(f"code prediction sees {tokens.shape[0]} latent positions, built for "
                             f"{self.position_emb.shape[0]} (train on crops of that size)")
        x = self.feat_emb(tokens)
        pos = self.position_emb.unsqueeze(1)
        for layer in self.ft_layers:
            x = layer(x, pos)
        return self.idx_pred_layer(x).permute(1, 0, 2)


# -- the whole model -----------------------------------------------------------------------------------
def four_part_masks(channels: int, height: int, width: int, device=None) -> list[torch.Tensor]:
    """The four passes' (C, H, W) bool masks: in pass k, channel group g codes the 2x2 phase
    ``PHASE_ORDER[k][g]``, so every pass sees a quarter of each group and all passes tile y."""
    group = channels // 4
    rows = torch.arange(height, device=device).view(-1, 1) % 2
    cols = torch.arange(width, device=device).view(1, -1) % 2
    phases = [(rows == r) & (cols == c) for r, c in ((0, 0), (0, 1), (1, 0), (1, 1))]
    masks = []
    for order in PHASE_ORDER:
        masks.append(torch.cat([phases[p].expand(group, height, width) for p in order], 0))
    return masks


#: Phase (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right) coded by each channel group
#: in each pass, as the released model was trained.
PHASE_ORDER = ((0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2))


class GLCImage(nn.Module):
    """GLC for images; ``code_prediction`` builds the two training-only transformers."""

    def __init__(self, cfg: GLCConfig, *, code_prediction: bool = False):
        super().__init__()
        self.cfg = cfg
        N = cfg.N
        self.enc = ScaledTransform(N, "enc_1", "enc_2")
        self.hyper_enc = nn.Sequential(DepthConvBlock(N, N), nn.Conv2d(N, N, 3, stride=2, padding=1),
                                       nn.LeakyReLU(), nn.Conv2d(N, N, 3, stride=2, padding=1))
        self.hyper_dec = nn.Sequential(ResidualBlockUpsample(N, N), ResidualBlockUpsample(N, N),
                                       DepthConvBlock(N, N))
        self.y_prior_fusion = nn.Sequential(DepthConvBlock(N, 2 * N), DepthConvBlock(2 * N, 3 * N))
        self.y_spatial_prior_reduction = nn.Conv2d(3 * N, N, 1)
        self.y_spatial_prior_adaptor_1 = DepthConvBlock(2 * N, 2 * N)
        self.y_spatial_prior_adaptor_2 = DepthConvBlock(2 * N, 2 * N)
        self.y_spatial_prior_adaptor_3 = DepthConvBlock(2 * N, 2 * N)
        self.y_spatial_prior = nn.Sequential(*[DepthConvBlock(2 * N, 2 * N) for _ in range(3)])
        self.dec = ScaledTransform(N, "dec_1", "dec_2")
        self.q_enc = nn.Parameter(torch.ones(cfg.n_rates, N, 1, 1))
        self.q_dec = nn.Parameter(torch.ones(cfg.n_rates, N, 1, 1))
        self.vqgan = VQAutoEncoder(cfg)
        if code_prediction:
            self.code_pred_loss = CodePredictor(cfg)
            self.code_pred_pix_loss = CodePredictor(cfg)
        # The hyper codebook starts as a copy of the VQ-VAE's (then trained on its own).
        self.z_vq = copy.deepcopy(self.vqgan.quantize)

    # The encoder side --------------------------------------------------------------------------------
    def analysis(self, x: torch.Tensor, rate: int) -> torch.Tensor:
        """y of an image x in [-1, 1] (B, 3, H, W), H and W multiples of ``cfg.pad_multiple``."""
        return self.enc(self.vqgan.encoder(x), self.q_enc[rate : rate + 1])

    def hyper_indices(self, y: torch.Tensor) -> torch.Tensor:
        """The (B, H/4, W/4) codebook indices that stand for y's hyper latent."""
        return self.z_vq.indices(self.hyper_enc(y))

    # Both sides ----------------------------------------------------------------------------------------
    def hyper_params(self, indices: torch.Tensor) -> torch.Tensor:
        """The (B, 3N, H, W) context of every pass from the hyper indices: quantisation step,
        pass-0 scales and means, then what the later passes reduce to N channels."""
        return self.y_prior_fusion(self.hyper_dec(self.z_vq.lookup(indices)))

    def pass_params(self, index: int, y_hat_so_far: torch.Tensor, reduced: torch.Tensor):
        """(scales, means) of pass ``index`` (1-3) from the passes decoded so far."""
        adaptor = getattr(self, f"y_spatial_prior_adaptor_{index}")
        return self.y_spatial_prior(adaptor(torch.cat((y_hat_so_far, reduced), dim=1))).chunk(2, 1)

    def synthesis(self, y_hat: torch.Tensor, rate: int) -> torch.Tensor:
        """The image in [-1, 1] (not clamped) from the de-quantised latent."""
        return self.vqgan.generator(self.dec(y_hat, self.q_dec[rate : rate + 1]))

    # Training ----------------------------------------------------------------------------------------
    def forward_train(self, x: torch.Tensor, rate: int) -> dict[str, torch.Tensor]:
        """Straight-through forward pass: y-hat, the latent the generator sees (``latent``, to
        compare with the VQ-VAE encoder's), x-hat, the Gaussian bits of y and the z indices."""
        y = self.analysis(x, rate)
        z_hat, z_loss, indices = self.z_vq(self.hyper_enc(y))
        params = self.y_prior_fusion(self.hyper_dec(z_hat))
        quant_step, scales, means = params.chunk(3, 1)
        reduced = self.y_spatial_prior_reduction(params)
        step = LowerBoundSTE.apply(quant_step, MIN_QUANT_STEP)
        y_scaled = y / step
        masks = [m.unsqueeze(0).to(y.dtype) for m in four_part_masks(y.shape[1], y.shape[2], y.shape[3], y.device)]
        y_hat_so_far = torch.zeros_like(y)
        bits = y.new_zeros(y.shape[0])
        for index, mask in enumerate(masks):
            if index:
                scales, means = self.pass_params(index, y_hat_so_far, reduced)
            residual = (y_scaled - means) * mask
            symbols = residual + (torch.round(residual) - residual).detach()
            y_hat_so_far = y_hat_so_far + (symbols + means) * mask
            bits = bits + (gaussian_bits(symbols, scales) * mask).flatten(1).sum(1)
        y_hat = y_hat_so_far * step
        latent = self.dec(y_hat, self.q_dec[rate : rate + 1])
        return {"y": y, "y_hat": y_hat, "latent": latent, "x_hat": self.vqgan.generator(latent), "bits_y": bits,
                "z_indices": indices, "z_loss": z_loss}


class LowerBoundSTE(torch.autograd.Function):
    """max(x, bound) whose gradient still pushes values below the bound upwards."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x >= ctx.bound) | (grad < 0)).to(grad.dtype), None


def gaussian_bits(symbols: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """-log2 P(symbol) under a zero-mean Gaussian of std ``scales`` integrated over [s-1/2, s+1/2]:
    the release's rate estimate (std clamped to 1e-5, probability floored by 1e-5)."""
    sigma = scales.clamp(1e-5, 1e10)
    normal = torch.distributions.Normal(torch.zeros_like(sigma), sigma)
    probability = normal.cdf(symbols + 0.5) - normal.cdf(symbols - 0.5)
    return (-torch.log2(probability + 1e-5)).clamp_min(0)


def read_checkpoint(path) -> dict:
    """The model's tensors in a GLC checkpoint, unwrapped as the release's test code does
    (``state_dict``, then ``net``, then ``net_g``) with ``module.`` prefixes stripped."""
    from ..statedict import one_line

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted file is one line
        raise ConfigError(f"{path}: not a GLC checkpoint ({one_line(exc)})") from None
    for key in ("state_dict", "net", "net_g"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{path}: not a GLC checkpoint (expected tensors, possibly under "
                          f"state_dict/net/net_g)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: GLCImage, state: dict, path, config_name: str) -> None:
    """Load release-layout tensors with ``strict=True``, after checking every key and shape (the
    code-prediction transformers' keys are dropped when the model has none)."""
    from ..errors import InputError
    from ..statedict import check_layout

    if not hasattr(model, "code_pred_loss"):
        state = {k: v for k, v in state.items() if not k.startswith(CODE_PREDICTION_PREFIXES)}
    try:
        check_layout(path, f"a GLC checkpoint of configuration {config_name}", state, model.state_dict())
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    model.load_state_dict(state, strict=True)
