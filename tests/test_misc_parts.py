"""MISC's building blocks: the five-line answer, the block masks, the text coding and the paper's
rate formula."""

from __future__ import annotations

import numpy as np
import pytest

from ulbc.errors import BitstreamError, ConfigError, InputError
from ulbc.misc import masks, rate, text
from ulbc.misc.answer import Answer, parse_answer

ANSWER = """Lighthouse, Rocky shore, Sailing boat.
A white lighthouse with a red lantern room stands on the cliff.
Dark wet rocks line the shore where small waves break.
A small sailing boat with a white sail drifts near the horizon.
A calm coastal scene on a bright afternoon: a white lighthouse on a rocky headland above the sea, \
waves breaking on dark rocks below, a small sailing boat far out on blue water under a pale sky with \
thin clouds, soft natural light and gentle colours.
"""


def test_the_five_line_answer_is_parsed():
    answer = parse_answer(ANSWER, "kodim21")
    assert answer.objects == ("Lighthouse", "Rocky shore", "Sailing boat")
    assert answer.details[1].startswith("Dark wet rocks") and answer.overall.endswith("gentle colours.")
    assert parse_answer(answer.text(), "again") == answer
    # Numbering, blank lines, CRLF and spaces are what models add: tolerated.
    numbered = "\r\n".join(f"  {n}. {line}  " if n != 3 else f"\n{n}) {line}" for n, line in
                           enumerate(answer.lines(), 1))
    assert parse_answer(numbered, "numbered") == answer


@pytest.mark.parametrize("broken, problem", [
    ("Lighthouse, Rocky shore.\nA.\nB.\nC.\nAll.", "should name 3 objects"),
    ("A, B, C.\nOne.\nTwo.\nAll.", "4 non-empty line(s), expected 5"),
    ("A, B, C.\nOne.\nTwo.\nThree.\nAll.\nExtra.", "6 non-empty line(s)"),
    ("A, , C.\nOne.\nTwo.\nThree.\nAll.", "should name 3 objects"),
    ("A big red old barn, B, C.\nOne.\nTwo.\nThree.\nAll.", "has more than 3 words"),
    ("Dog, dog, Cat.\nOne.\nTwo.\nThree.\nAll.", "names an object twice"),
    ("A, B, C.\nOne\x00.\nTwo.\nThree.\nAll.", "non-printable"),
    ("A, B, C.\nOne.\nTwo.\nThree.\n" + "x" * 2001, "line 5 of the answer has 2001 characters"),
    ("", "0 non-empty line(s)"),
])
def test_a_malformed_answer_is_a_one_line_error_naming_the_item(broken, problem):
    with pytest.raises(InputError) as info:
        parse_answer(broken, "kodim07")
    message = str(info.value)
    assert message.startswith("kodim07: ") and problem in message and "\n" not in message


def test_masks_pack_at_one_bit_per_block_and_round_trip():
    rng = np.random.default_rng(0)
    three = rng.random((3, 8, 8)) < 0.4
    packed = masks.pack_masks(three)
    assert len(packed) == masks.mask_bytes(3, 8) == 24  # the paper's 192 bits
    assert np.array_equal(masks.unpack_masks(packed, 3, 8), three)
    odd = rng.random((2, 5, 5)) < 0.5  # 50 bits: 7 bytes, 6 padding bits
    assert np.array_equal(masks.unpack_masks(masks.pack_masks(odd), 2, 5), odd)
    # Row-major, most significant bit first.
    one = np.zeros((1, 8, 8), bool)
    one[0, 0, 1] = one[0, 1, 7] = True
    assert masks.pack_masks(one)[:2] == bytes([0b01000000, 0b00000001])
    with pytest.raises(BitstreamError, match="padding bits"):
        masks.unpack_masks(masks.pack_masks(odd)[:-1] + bytes([masks.pack_masks(odd)[-1] | 1]), 2, 5)
    with pytest.raises(BitstreamError, match="expected 24"):
        masks.unpack_masks(packed[:-1], 3, 8)
    with pytest.raises(BitstreamError, match="grid 0"):
        masks.unpack_masks(b"", 3, 0)


def test_a_similarity_map_becomes_a_block_mask_at_the_threshold():
    similarity = np.zeros((224, 224))
    similarity[:56, 168:] = 0.9  # the top-right 2 x 2 blocks of an 8 x 8 grid
    similarity[112:140, :28] = 0.35  # exactly the threshold: kept
    mask = masks.block_mask(similarity)
    expected = np.zeros((8, 8), bool)
    expected[:2, 6:] = True
    expected[4, 0] = True
    assert np.array_equal(mask, expected)
    assert masks.block_mask(np.full((3, 5), 0.5)).all()  # a map smaller than the grid still gives 8 x 8


def test_text_coding_round_trips_and_beats_eight_bits_per_character():
    answer = parse_answer(ANSWER, "kodim21")
    sent = "\n".join(rate.paper_text(answer, using_maps=True))
    sizes = {}
    for method in text.METHODS:
        method_id, coded = text.encode_text(sent, method)
        assert text.decode_text(method_id, coded) == sent
        sizes[method] = len(coded)
    assert sizes["utf8"] == len(sent.encode())
    # A few hundred characters of English: brotli's built-in dictionary pays; deflate gains little.
    assert sizes["brotli"] < 0.8 * sizes["utf8"], sizes
    method_id, coded = text.encode_text(sent)
    assert len(coded) == min(sizes.values()) and text.decode_text(method_id, coded) == sent
    assert text.encode_text("", "auto")[1] == b""  # the empty text: the raw method, zero bytes
    assert text.decode_text(0, "é ü".encode()) == "é ü"


def test_damaged_text_is_a_bitstream_error():
    sent = ANSWER * 3
    for method in ("deflate", "brotli"):
        method_id, coded = text.encode_text(sent, method)
        for bad in (coded[: len(coded) // 2], coded + b"\x00junk"):
            with pytest.raises(BitstreamError):
                text.decode_text(method_id, bad)
    with pytest.raises(BitstreamError, match="unknown text coding id 9"):
        text.decode_text(9, b"")
    with pytest.raises(BitstreamError, match="not UTF-8"):
        text.decode_text(0, b"\xff\xfe")
    with pytest.raises(ConfigError, match="unknown text coding"):
        text.encode_text("x", "gzip")
    import brotli

    for method_id, forged in ((1, text._deflate(b"a" * (4 * text.MAX_TEXT_BYTES))),
                              (2, brotli.compress(b"a" * (4 * text.MAX_TEXT_BYTES)))):
        with pytest.raises(BitstreamError, match="more than"):  # a few bytes that expand without end
            text.decode_text(method_id, forged)
    longest_id, longest = text.encode_text("a" * text.MAX_TEXT_BYTES, "brotli")
    assert text.decode_text(longest_id, longest) == "a" * text.MAX_TEXT_BYTES


def test_the_papers_formula_on_a_worked_example():
    """bpp = (image bits + mask bits + 8 x characters) / pixels, as the notebook counts it."""
    answer = Answer(("Dog", "Ball", "Bench"), ("A brown dog.", "A red ball.", "A wooden bench."),
                    "A brown dog plays with a red ball next to a wooden bench in a sunny park.")
    width, height = 768, 512
    image_bits = 0.0421 * width * height  # a base codec that reported 0.0421 bpp
    # No maps: only the overall description (73 characters) is counted.
    assert len(answer.overall) == 73
    no_maps = rate.paper_bpp(image_bits, rate.paper_text(answer, False), width, height, using_maps=False)
    assert no_maps == pytest.approx(0.0421 + 8 * 73 / (768 * 512))
    assert round(no_maps, 6) == 0.043585
    # With maps: 192 mask bits and the three details (12 + 11 + 15 characters) as well.
    with_maps = rate.paper_bpp(image_bits, rate.paper_text(answer, True), width, height, using_maps=True)
    assert with_maps == pytest.approx(0.0421 + (192 + 8 * (73 + 12 + 11 + 15)) / (768 * 512))
    assert round(with_maps, 6) == 0.044847
