"""Cost figures: time against rate for every study, the rate split and MACs against BD-rate only
where codecs report them."""

from __future__ import annotations

import pytest
from test_rd import ANCHOR_BPP, ANCHOR_PSNR, curve_rows, frame

from ulbc.costplots import per_point_costs, write_cost_plots
from ulbc.rd import bd_rate_table


def rows(with_stats: bool):
    out = curve_rows("jpeg", ANCHOR_BPP, ANCHOR_PSNR)
    overfitted = curve_rows("lottery", [0.8 * b for b in ANCHOR_BPP], ANCHOR_PSNR)
    if with_stats:
        for r in overfitted:  # 64x64 items: 4096 pixels
            r.update(bits_latent=4096 * 0.6 * r["bpp"], bits_nn=4096 * 0.3 * r["bpp"], bits_mask=4096 * 0.1 * r["bpp"],
                     macs_per_pixel=900.0)
    return out + overfitted


def test_rate_split_is_bits_per_pixel_of_each_part():
    costs = per_point_costs(frame(rows(True))).set_index(["method", "rate_label"])
    point = costs.loc[("lottery", "r1")]
    assert point["bits_latent_bpp"] == pytest.approx(0.6 * point["bpp"])
    assert point["bits_nn_bpp"] + point["bits_mask_bpp"] == pytest.approx(0.4 * point["bpp"])
    assert costs.loc[("jpeg", "r1"), "bits_nn_bpp"] != costs.loc[("jpeg", "r1"), "bits_nn_bpp"]  # NaN: not reported


@pytest.mark.parametrize("with_stats", [True, False])
def test_figures_only_where_the_data_is(tmp_path, with_stats):
    data = frame(rows(with_stats))
    written = write_cost_plots(data, bd_rate_table(data, "jpeg"), tmp_path, labels={})
    names = sorted(p.stem for p in written)
    assert names == (["macs_vs_bdrate", "rate_split", "time_vs_rate"] if with_stats else ["time_vs_rate"])
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.with_suffix(".svg").exists()
    if with_stats:
        assert "lottery" in (tmp_path / "macs_vs_bdrate.svg").read_text()
