"""MISC's rate as its paper counts it (``bpp_paper``), beside the file's real size.

The authors' notebook adds up, over the original image's W x H pixels:

* the base image's bits: its codec's estimate (CompressAI likelihoods) or, for an external
  codec, the bpp that codec reported times W x H;
* 192 bits of masks (3 objects on an 8 x 8 grid) when the maps are used;
* 8 bits per character of the text that reaches the decoder: the three detail sentences and the
  overall description with maps, the overall description alone without. Object names are not
  counted (only the encoder's mapper reads them), nor is any header (size, mode, lengths).
"""

from __future__ import annotations

from typing import Sequence

from .answer import Answer
from .masks import GRID

BITS_PER_CHARACTER = 8


def paper_text(answer: Answer, using_maps: bool) -> list[str]:
    """The texts the paper's formula counts: details and overall with maps, overall alone without."""
    return [*answer.details, answer.overall] if using_maps else [answer.overall]


def paper_bits(image_bits: float, texts: Sequence[str], *, using_maps: bool, objects: int = 3,
               grid: int = GRID) -> float:
    """Bits of one image as the paper counts them (characters as Python counts them)."""
    mask_bits = objects * grid * grid if using_maps else 0
    return float(image_bits) + mask_bits + BITS_PER_CHARACTER * sum(len(text) for text in texts)


def paper_bpp(image_bits: float, texts: Sequence[str], width: int, height: int, *, using_maps: bool,
              objects: int = 3, grid: int = GRID) -> float:
    return paper_bits(image_bits, texts, using_maps=using_maps, objects=objects, grid=grid) / (width * height)
