"""Object maps as block masks: ``count`` binary ``grid`` x ``grid`` masks, one bit per block.

MISC marks each of its three objects on an 8 x 8 grid over the image (192 bits in all). The bits
are stored mask after mask, rows top to bottom, blocks left to right, most significant bit first,
zero-padded to a whole byte; the grid and the count are in the file's header, so the size of the
field follows from them and a padding bit that is not zero is damage.
"""

from __future__ import annotations

import numpy as np

from ..errors import BitstreamError

#: The paper's grid side: each object's similarity map is reduced to 8 x 8 blocks.
GRID = 8
#: Largest grid a file may declare (a 64 x 64 grid is already finer than any map the method makes).
MAX_GRID = 64


def mask_bytes(count: int, grid: int) -> int:
    return (count * grid * grid + 7) // 8


def pack_masks(masks: np.ndarray) -> bytes:
    """(count, grid, grid) booleans (or 0/1) -> bytes."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or not 1 <= masks.shape[1] <= MAX_GRID:
        raise ValueError(f"masks must be (count, grid, grid) with grid 1-{MAX_GRID}, got {masks.shape}")
    if not np.isin(masks, (0, 1)).all():
        raise ValueError("masks must hold 0/1 (or booleans) only")
    return np.packbits(masks.astype(np.uint8).reshape(-1)).tobytes()


def unpack_masks(data: bytes, count: int, grid: int) -> np.ndarray:
    """The (count, grid, grid) bool masks of :func:`pack_masks`; BitstreamError when ``data`` is
    not their size or a padding bit is set."""
    if not 1 <= grid <= MAX_GRID:
        raise BitstreamError(f"mask grid {grid} outside 1-{MAX_GRID}")
    expected = mask_bytes(count, grid)
    if len(data) != expected:
        raise BitstreamError(f"the masks take {len(data)} bytes, expected {expected} ({count} of {grid}x{grid})")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    used = count * grid * grid
    if bits[used:].any():
        raise BitstreamError("the padding bits after the masks are not zero")
    return bits[:used].reshape(count, grid, grid).astype(bool)


def block_mask(similarity: np.ndarray, grid: int = GRID, threshold: float = 0.35) -> np.ndarray:
    """A (grid, grid) bool mask from an (H, W) similarity map in [0, 1]: the mean of each block
    (area averaging over the map's pixels) at or above ``threshold``, as the paper thresholds its
    8 x 8 map."""
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or min(similarity.shape) < 1:
        raise ValueError(f"a similarity map is (H, W), got {similarity.shape}")
    height, width = similarity.shape
    rows = np.linspace(0, height, grid + 1)
    cols = np.linspace(0, width, grid + 1)
    means = np.empty((grid, grid))
    for i in range(grid):
        for j in range(grid):
            r0, r1 = int(np.floor(rows[i])), max(int(np.ceil(rows[i + 1])), int(np.floor(rows[i])) + 1)
            c0, c1 = int(np.floor(cols[j])), max(int(np.ceil(cols[j + 1])), int(np.floor(cols[j])) + 1)
            means[i, j] = similarity[r0:r1, c0:c1].mean()
    return means >= threshold
