"""GLC configurations, without importing torch (the codec registry and the CLI read them)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class GLCConfig:
    """The sizes of a GLC image model; the defaults are the authors' released configuration.

    ``N`` is the channel count of the latent transform coder and must equal ``emb_dim`` (the
    coder maps the VQ-VAE latent to y at the same width, and z is matched against a copy of the
    VQ codebook). The VQ-VAE down-samples by 2 per entry of ``vq_ch_mult`` after the first; the
    hyper coder by another 4.
    """

    N: int = 256
    n_rates: int = 4
    vq_nf: int = 128
    vq_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    vq_res_blocks: int = 2
    #: Resolutions (relative to ``vq_img_size``) at which the VQ-VAE has attention blocks.
    vq_attn_resolutions: tuple[int, ...] = (16,)
    vq_img_size: int = 256
    codebook_size: int = 16384
    emb_dim: int = 256
    #: Side of the latent patches in which attention is evaluated at inference.
    attn_patch: int = 32
    #: GroupNorm groups of the VQ-VAE (32 in the release; smaller for tiny test models).
    norm_groups: int = 32
    code_pred_dim: int = 512
    code_pred_heads: int = 8
    code_pred_layers: int = 9
    #: Latent positions of the training crops the code-prediction transformers see (16x16).
    code_pred_positions: int = 256

    def __post_init__(self) -> None:
        ints = {k: v for k, v in asdict(self).items() if isinstance(v, int)}
        if any(isinstance(v, bool) or v < 1 for v in ints.values()):
            raise ConfigError(f"GLC configuration: sizes must be positive integers, got {ints}")
        if self.N != self.emb_dim:
            raise ConfigError(f"GLC configuration: N ({self.N}) must equal emb_dim ({self.emb_dim})")
        if self.N % 4:
            raise ConfigError(f"GLC configuration: N ({self.N}) must be a multiple of 4 (four-pass context)")
        if len(self.vq_ch_mult) < 2:
            raise ConfigError("GLC configuration: vq_ch_mult needs at least two entries")
        widths = {self.vq_nf * m for m in self.vq_ch_mult}
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"GLC configuration: VQ-VAE widths {sorted(widths)} are not multiples of "
                              f"norm_groups {self.norm_groups}")
        if self.code_pred_dim % self.code_pred_heads:
            raise ConfigError("GLC configuration: code_pred_dim must be a multiple of code_pred_heads")

    @property
    def latent_stride(self) -> int:
        """Pixels per position of y."""
        return 2 ** (len(self.vq_ch_mult) - 1)

    @property
    def pad_multiple(self) -> int:
        """Pixels per position of z: images are padded to a multiple of this."""
        return 4 * self.latent_stride

    @property
    def index_bits(self) -> int:
        """Bits of one packed hyper-latent index."""
        return max(1, math.ceil(math.log2(self.codebook_size)))


#: The configurations a bitstream can name, by id (stored in every file; never reorder or reuse).
CONFIGS: dict[str, GLCConfig] = {
    # The authors' GLC-image release (checkpoint GLC_image.pth.tar).
    "glc-image": GLCConfig(),
    # A tiny random-initialised model for tests and demos: same structure, a few thousand weights.
    "glc-tiny": GLCConfig(N=16, emb_dim=16, vq_nf=8, vq_ch_mult=(1, 1, 1, 1, 2), vq_res_blocks=1,
                          codebook_size=64, attn_patch=4, norm_groups=4, code_pred_dim=32,
                          code_pred_heads=2, code_pred_layers=1, code_pred_positions=16),
}
CONFIG_IDS: tuple[str, ...] = ("glc-image", "glc-tiny")


def get_config(name: str) -> GLCConfig:
    if name not in CONFIGS:
        raise ConfigError(f"unknown GLC configuration {name!r}; known: {', '.join(CONFIG_IDS)}")
    return CONFIGS[name]
