"""Where a MISC file's bits go, and what each text coding saves against the paper's 8 bits per character.

For every image of a folder that the caption table answers, codes it with ``misc`` (table captions,
no maps, the given base codec) at each rate, and prints the file's bits split into container and
parameters, base bitstream and text, next to the paper's formula (``bpp_paper``). Then, over all
the table's texts, the bits per character of every text coding (``ulbc.misc.text``).

    python benchmarks/misc_rate.py --images <folder> --captions config/misc-captions.csv --rates 5 20 50

(the samples: ``python -c "from ulbc.datasets import materialize_samples; materialize_samples('s')"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ulbc import bitstream
from ulbc.codecs import get_codec
from ulbc.codecs.misc import parse_params
from ulbc.imageio import load_rgb
from ulbc.misc import text as text_coding
from ulbc.misc.captioners import get_captioner, item_keys
from ulbc.misc.rate import paper_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--captions", type=Path, required=True, help="caption table (CSV or JSON)")
    parser.add_argument("--base", default="jpeg", help="base codec (default jpeg)")
    parser.add_argument("--downscale", type=int, default=4, help="base image shrink factor per side")
    parser.add_argument("--rates", type=float, nargs="+", default=[5, 20, 50], help="base codec rates")
    args = parser.parse_args()

    table = get_captioner("table", path=str(args.captions))
    codec = get_codec("misc", captioner_options={"path": str(args.captions)}, base=args.base,
                      downscale=args.downscale)
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                    and any(key in table.answers for key in item_keys(p.name)))
    print(f"{'image':<16} {'rate':>5} {'bpp':>8} {'bpp_paper':>9} {'base %':>7} {'text %':>7} {'other %':>8}")
    for path in images:
        image = np.asarray(load_rgb(path))
        for rate in args.rates:
            result = codec.encode_result(image, rate, name=path.stem)
            container = bitstream.parse(result.data)
            parts = parse_params(container.params, container.payload, container.width, container.height)
            bits = 8 * len(result.data)
            base_bits = 8 * len(parts["base"])
            text_bits = 8 * result.info["text_bytes"]
            pixels = image.shape[0] * image.shape[1]
            print(f"{path.stem:<16} {rate:>5g} {bits / pixels:>8.4f} {result.info['bpp_paper']:>9.4f} "
                  f"{100 * base_bits / bits:>7.1f} {100 * text_bits / bits:>7.1f} "
                  f"{100 * (bits - base_bits - text_bits) / bits:>8.1f}")
    print()
    for using_maps, label in ((False, "overall description only (no maps)"),
                              (True, "details and overall (with maps)")):
        texts = ["\n".join(paper_text(answer, using_maps)) for answer in table.answers.values()]
        characters = sum(len(t) for t in texts)
        row = []
        for method in text_coding.METHODS:
            size = sum(len(text_coding.encode_text(t, method)[1]) for t in texts)
            row.append(f"{method} {8 * size / characters:.2f}")
        auto = sum(len(text_coding.encode_text(t, "auto")[1]) for t in texts)
        print(f"{label}: {len(texts)} texts, {characters} characters; bits per character: {', '.join(row)}, "
              f"auto {8 * auto / characters:.2f} (paper: 8)")


if __name__ == "__main__":
    main()
