import numpy as np
import pytest

from ulbc.errors import BitstreamError
from ulbc.overfit.maskcoding import decode_masks, encode_masks, ideal_mask_bits

SHAPES = [(32, 2), (24, 38), (16, 33), (3, 73)]


def random_masks(keep, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random(s) < keep for s in SHAPES]


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.7, 0.95])
def test_round_trip_and_size_near_the_entropy_bound(keep):
    masks = random_masks(keep)
    data = encode_masks(masks)
    decoded = decode_masks(data, SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(masks, decoded))
    ideal = ideal_mask_bits(masks)
    # counts (<= 2 bytes each) + at most one 32-bit word of range-coder slack + rounding to words
    assert ideal <= 8 * len(data) <= ideal + 8 * 2 * len(SHAPES) + 64


def test_all_kept_and_none_kept_layers_cost_no_payload():
    masks = [np.ones(s, bool) for s in SHAPES[:2]] + [np.zeros(SHAPES[2], bool)]
    data = encode_masks(masks)
    assert len(data) == 1 + 2 + 1  # varints 64, 912, 0; no range-coded words
    assert all(np.array_equal(a, b) for a, b in zip(masks, decode_masks(data, SHAPES[:3])))


def test_damage_is_detected():
    data = encode_masks(random_masks(0.3))
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            decode_masks(data[:n], SHAPES)
    caught = 0
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x10
        try:
            decode_masks(bytes(bad), SHAPES)
        except BitstreamError:
            caught += 1
    # The surrounding container's CRC catches every flip; the count check alone catches most.
    assert caught >= 0.8 * len(data)
