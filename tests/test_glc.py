"""GLC (CVPR 2024): the released configuration's layout, and the codec on the tiny random
configuration (weights in the release layout, fetched from 127.0.0.1 through the weights manager)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from standin_weights import write_glc_standin
from test_download import FixtureServer
from test_weights import isolate_weights
from ulbc import bitstream, weights
from ulbc.errors import BitstreamError, ConfigError, UlbcError

torch = pytest.importorskip("torch")

from ulbc.codecs import decode_bitstream, get_codec  # noqa: E402 - after the skip
from ulbc.codecs import glc as glc_codec  # noqa: E402
from ulbc.glc import coding  # noqa: E402
from ulbc.glc.config import GLCConfig, get_config  # noqa: E402
from ulbc.glc.model import GLCImage  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "ulbc" / "data" / "glc_image_manifest.json"
STANDIN = "standin-glc-tiny"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    isolate_weights(monkeypatch, tmp_path / "weights", tmp_path / "torch")
    glc_codec._models.clear()
    yield
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
    weights._sync_site_registry()
    glc_codec._models.clear()


@pytest.fixture
def served(tmp_path, monkeypatch) -> Path:
    """The tiny stand-in registered in a site registry and fetched from 127.0.0.1."""
    path = write_glc_standin(tmp_path / "standins" / f"{STANDIN}.pth")
    entry = {"name": STANDIN, "file_name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "size": path.stat().st_size, "licence": "test (random values)", "used_by": ["glc"],
             "description": "random glc-tiny in the release layout"}
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump([entry]))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    with FixtureServer(files={f"/{path.name}": path.read_bytes()}) as server:
        monkeypatch.setenv("ULBC_WEIGHTS_MIRROR", server.url(""))
        cached = weights.fetch(STANDIN, progress=False)
        assert [p for p, _ in server.requests] == [f"/{path.name}"]
    monkeypatch.delenv("ULBC_WEIGHTS_MIRROR")
    return cached


@pytest.fixture
def codec(served):
    return get_codec("glc", config="glc-tiny", checkpoint=STANDIN)


@pytest.fixture
def image(photo):
    return np.ascontiguousarray(photo[:70, :90])  # not a multiple of 64: padded, then cropped back


def test_the_released_configuration_has_the_manifests_names_and_shapes():
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        model = GLCImage(GLCConfig(), code_prediction=True)
    state = model.state_dict()
    assert [name for name, _, _ in manifest["entries"]] == list(state)
    assert {name: tuple(shape) for name, shape, _ in manifest["entries"]} == {k: tuple(v.shape) for k, v in state.items()}
    assert {dtype for _, _, dtype in manifest["entries"]} == {"float32"}
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    # The inference model is the release without its training-only transformers.
    with torch.device("meta"):
        inference = GLCImage(GLCConfig()).state_dict()
    assert set(inference) == {n for n, _, _ in manifest["entries"] if not n.startswith(("code_pred_loss.",
                                                                                          "code_pred_pix_loss."))}


def test_file_decodes_in_a_fresh_process_to_the_encoders_pixels(codec, image, tmp_path):
    for rate in (0, 3):
        result = codec.encode_result(image, rate)
        assert codec.encode(image, rate) == result.data, "two encodes, one file"
        path = tmp_path / f"r{rate}.ulbc"
        path.write_bytes(result.data)
        out = tmp_path / f"r{rate}.png"
        proc = subprocess.run([sys.executable, "-m", "ulbc", "decode", str(path), str(out)], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr
        from ulbc.imageio import load_rgb

        decoded = np.asarray(load_rgb(out))
        assert decoded.shape == image.shape and np.array_equal(decoded, result.reconstruction)


def test_the_rate_index_changes_the_rate_and_the_file_is_at_least_the_estimate(codec, image):
    bits = []
    for rate in range(4):
        result = codec.encode_result(image, rate)
        pixels = image.shape[0] * image.shape[1]
        container = bitstream.parse(result.data)
        payload_bits = 8 * len(container.payload)
        estimated = result.info["bpp_estimated"] * pixels
        # The range coder's Gaussians use the scale table, not the exact scales: a few percent either
        # way is possible per symbol, not in total over an image.
        assert payload_bits >= 0.97 * estimated, (payload_bits, estimated)
        assert result.info["z_bits"] == 4 * 6  # 70x90 pads to 128x128: 2x2 hyper positions of 6 bits
        bits.append(payload_bits)
        assert result.info["weights"]["file"] == STANDIN and len(result.info["weights"]["sha256"]) == 64
    assert bits == sorted(bits) and bits[-1] > bits[0], bits


def test_z_packing_round_trips_and_checks_its_padding():
    rng = np.random.default_rng(0)
    for bits, count in ((14, 1), (14, 7), (6, 5), (1, 9), (14, 510)):
        indices = rng.integers(0, 1 << bits, count)
        packed = coding.pack_indices(indices, bits)
        assert len(packed) == coding.z_bytes(count, bits) == (count * bits + 7) // 8
        assert np.array_equal(coding.unpack_indices(packed, count, bits), indices)
    # 14 bits each, most significant first: 16383 then 1 -> 11111111 111111|00 00000000 0001|0000
    assert coding.pack_indices(np.array([16383, 1]), 14) == bytes([0xFF, 0xFC, 0x00, 0x10])
    with pytest.raises(BitstreamError, match="padding bits"):
        coding.unpack_indices(bytes([0xFF, 0xFC, 0x00, 0x11]), 2, 14)
    with pytest.raises(BitstreamError, match="expected 4"):
        coding.unpack_indices(bytes(3), 2, 14)
    with pytest.raises(ValueError, match="outside"):
        coding.pack_indices(np.array([1 << 14]), 14)


def test_scales_snap_to_the_nearest_table_entry():
    table = torch.from_numpy(coding.SCALE_TABLE)
    assert torch.equal(coding.snap_scales(table), torch.arange(coding.SCALE_TABLE_SIZE))
    assert coding.snap_scales(torch.tensor([0.0, 1e-9, 1e9])).tolist() == [0, 0, coding.SCALE_TABLE_SIZE - 1]


@pytest.mark.parametrize("how", ["scales", "means"])
def test_a_decoder_out_of_step_is_caught_by_the_latent_checksum(codec, image, how, monkeypatch):
    data = codec.encode(image, 2)
    decode_bitstream(data)
    model = next(iter(glc_codec._models.values())).net
    original = model.pass_params

    def perturbed(index, y_hat_so_far, reduced):
        scales, means = original(index, y_hat_so_far, reduced)
        if how == "scales":
            return scales * 1.2, means  # one table step is 13 %: every scale moves
        return scales, means + 0.5 * (index == 2)  # a later pass's context changes

    monkeypatch.setattr(model, "pass_params", perturbed)
    with pytest.raises(BitstreamError, match="checksum|range-coded part is invalid"):
        decode_bitstream(data)


def test_odd_sizes_are_padded_and_cropped(codec):
    rng = np.random.default_rng(1)
    for height, width in ((1, 1), (33, 65), (64, 64), (65, 130)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        result = codec.encode_result(image, 1)
        _, decoded = decode_bitstream(result.data)
        assert decoded.shape == image.shape and np.array_equal(decoded, result.reconstruction)
        padded = (-(-height // 64), -(-width // 64))
        assert result.info["z_bits"] == 6 * padded[0] * padded[1]  # 64-code book: 6 bits per hyper position


def test_a_batch_gives_each_items_own_file(codec, photo):
    images = [np.ascontiguousarray(photo[i * 10 : i * 10 + 48, i * 12 : i * 12 + 80]) for i in range(3)]
    codec.options["batch_size"] = 3
    batch = codec.encode_batch(images, 1, seeds=[0, 1, 2], names=["a", "b", "c"])
    codec.options["batch_size"] = 1
    for image, result in zip(images, batch):
        single = codec.encode_result(image, 1)
        assert single.data == result.data
        assert np.array_equal(decode_bitstream(result.data)[1], single.reconstruction)


def test_pixels_unlike_the_encoders_are_reported(codec, image, capsys):
    container = bitstream.parse(codec.encode(image, 0))
    params = container.params[:-4] + bytes(b ^ 0xFF for b in container.params[-4:])
    data = bitstream.Container(container.codec_id, container.width, container.height, params,
                               container.payload).to_bytes()
    _, decoded = decode_bitstream(data)
    assert decoded.shape == image.shape
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ulbc: warning: glc: these decoded pixels differ from the encoder's" in err


def test_damaged_files_are_one_line_errors_in_the_cli(codec, image, tmp_path, capsys):
    from ulbc import cli

    data = codec.encode(image, 1)
    container = bitstream.parse(data)
    cases = {
        "truncated": data[: len(data) // 2],
        "flip in y": bitstream.Container(container.codec_id, 90, 70, container.params,
                                         container.payload[:-3] + bytes([container.payload[-3] ^ 0x40])
                                         + container.payload[-2:]).to_bytes(),
        "no y": bitstream.Container(container.codec_id, 90, 70, container.params, container.payload[:3]).to_bytes(),
        "claims a bigger image": bitstream.Container(container.codec_id, 900, 700, container.params,
                                                     container.payload).to_bytes(),
        "bound 0": bitstream.Container(container.codec_id, 90, 70, _replace_bound(container.params, 0),
                                       container.payload).to_bytes(),
    }
    for case, bad in cases.items():
        path = tmp_path / "bad.ulbc"
        path.write_bytes(bad)
        assert cli.main(["decode", str(path), str(tmp_path / "out.png")]) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("ulbc: error: ") and "\n" not in err and str(path) in err, (case, err)
        assert not (tmp_path / "out.png").exists(), case


def _replace_bound(params: bytes, bound: int) -> bytes:
    header = glc_codec.parse_params(params, bytes(64), 90, 70)
    old = bitstream.encode_varint(header["bound"]) + header["checksum"] + header["pixels"]
    assert params.endswith(old)
    return params[: -len(old)] + bitstream.encode_varint(bound) + header["checksum"] + header["pixels"]


def test_the_decoder_checks_the_weights_it_names(codec, image, served, tmp_path, monkeypatch):
    data = codec.encode(image, 0)
    other = write_glc_standin(tmp_path / "other.pth", seed=5)
    served.write_bytes(other.read_bytes())  # same name, other file: the cache's copy fails its sha256
    glc_codec._models.clear()
    with pytest.raises(UlbcError) as info:
        decode_bitstream(data)
    assert "ulbc weights import" in str(info.value) and "\n" not in str(info.value)
    # A file checkpoint that changed since the encode.
    mine = write_glc_standin(tmp_path / "mine.pth", seed=2)
    path_codec = get_codec("glc", config="glc-tiny", checkpoint=str(mine))
    data = path_codec.encode(image, 0)
    mine.write_bytes(other.read_bytes())
    with pytest.raises(BitstreamError, match="but .*mine.pth has sha256"):
        decode_bitstream(data)


def test_missing_release_weights_name_the_import_command(image):
    codec = get_codec("glc")
    with pytest.raises(UlbcError) as info:
        codec.encode(image, 0)
    message = str(info.value)
    assert "GLC_image.pth.tar" in message and "ulbc weights import" in message and "\n" not in message


def test_a_checkpoint_of_another_configuration_is_refused(image, tmp_path):
    wrong = write_glc_standin(tmp_path / "tiny.pth")
    with pytest.raises(ConfigError, match="configuration glc-image"):
        get_codec("glc", checkpoint=str(wrong)).encode(image, 0)
    with pytest.raises(ConfigError, match="neither a file nor a registered"):
        get_codec("glc", checkpoint=str(tmp_path / "absent.pth")).check_resources(0)


def test_tiny_configuration_is_small_and_fast():
    model = GLCImage(get_config("glc-tiny"))
    assert sum(p.numel() for p in model.parameters()) < 300_000


@pytest.mark.slow
def test_a_study_with_glc_reports_perceptual_metrics(tmp_path, photo, monkeypatch):
    """A study config with glc (tiny stand-in, registered) next to jpeg: every row ok, LPIPS and
    DISTS per item, FID and KID per rate point (stand-in backbones), bpp_estimated beside bpp."""
    import pandas as pd
    import pyarrow.parquet as pq

    from standin_weights import write_standins
    from test_workflow import snakemake, write_study

    registry, names = write_standins(tmp_path / "standins", ["torchvision-alexnet", "torchvision-vgg16",
                                                              "inception-v3-fid"])
    glc = write_glc_standin(tmp_path / "standins" / f"{STANDIN}.pth")
    entries = yaml.safe_load(registry.read_text()) + [
        {"name": STANDIN, "file_name": glc.name, "sha256": hashlib.sha256(glc.read_bytes()).hexdigest(),
         "size": glc.stat().st_size, "licence": "test (random values)", "used_by": ["glc"], "description": "random"}]
    registry.write_text(yaml.safe_dump(entries))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    for entry in entries:
        weights.import_file(tmp_path / "standins" / entry["file_name"], entry["name"])
    metrics = ["psnr", "lpips", "dists", "fid", "kid"]
    options = {"lpips": {"weights": names["torchvision-alexnet"]}, "dists": {"weights": names["torchvision-vgg16"]},
               "fid": {"weights": names["inception-v3-fid"], "patch_size": 16, "min_patches": 20},
               "kid": {"weights": names["inception-v3-fid"], "patch_size": 16, "subset_size": 20, "subsets": 10}}
    methods = {"jpeg": {"rates": [10, 60]},
               "glc": {"rates": [0, 3], "options": {"config": "glc-tiny", "checkpoint": STANDIN}}}
    config = write_study(tmp_path, photo, methods=methods, metrics=metrics, metric_options=options)
    snakemake(tmp_path, config, "--cores", "2")
    out = tmp_path / "results" / "e2e"
    rows = pq.read_table(out / "metrics.parquet").to_pandas()
    assert (rows["status"] == "ok").all() and len(rows) == 3 * 4
    ours = rows[rows["method"] == "glc"]
    assert ours["lpips"].notna().all() and ours["dists"].notna().all() and ours["bpp_estimated"].notna().all()
    assert (ours["bpp"] >= 0.97 * ours["bpp_estimated"]).all()
    per_point = pq.read_table(out / "dataset_metrics.parquet").to_pandas()
    assert per_point.loc[per_point["method"] == "glc", ["fid", "kid"]].notna().all().all()
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[summary["method"] == "glc", ["lpips", "dists", "fid", "kid", "bpp_estimated"]].notna().all().all()
