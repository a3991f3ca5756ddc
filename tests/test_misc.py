"""The misc codec: a table of answers, a mapper, a base codec and a generator in one file, decoded
in a fresh process from the file alone; the tiny diffusion and CLIP networks are random files in
the real layouts, registered in a site registry and fetched from 127.0.0.1 by the weights manager."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_download import FixtureServer
from test_weights import isolate_weights
from ulbc import bitstream, weights
from ulbc.errors import BitstreamError, ConfigError, InputError

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

from standin_weights import write_clip_standin, write_diffusion_standins  # noqa: E402
from ulbc.codecs import decode_bitstream, get_codec  # noqa: E402
from ulbc.codecs import misc as misc_codec  # noqa: E402
from ulbc.imageio import load_rgb  # noqa: E402
from ulbc.misc import mappers  # noqa: E402
from ulbc.misc.answer import parse_answer  # noqa: E402
from ulbc.misc.generators import resize  # noqa: E402

ANSWER = ("Parrot, Branch, Leaves.\n"
          "A red and green parrot perched sideways.\n"
          "A thin brown branch crossing the frame.\n"
          "Blurred green leaves fill the background.\n"
          "A colourful parrot sits on a branch in front of soft green foliage, lit by daylight, with a shallow "
          "depth of field.")
OTHER = ANSWER.replace("Parrot, Branch", "Cat, Sofa").replace("A colourful parrot", "A sleepy cat")
CLIP = "standin-clip-vit-b-16"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    isolate_weights(monkeypatch, tmp_path / "weights", tmp_path / "torch")
    yield
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
    weights._sync_site_registry()


@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "answers.json"
    path.write_text(json.dumps({"parrot": ANSWER, "*": OTHER}))
    return path


@pytest.fixture
def image(photo):
    return np.ascontiguousarray(photo[:70, :90])  # not a multiple of the networks' 8 or 64


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("misc-standins")
    entries = write_diffusion_standins(folder) + [write_clip_standin(folder, name=CLIP)]
    return folder, entries


@pytest.fixture
def served(standins, tmp_path, monkeypatch) -> list[dict]:
    """The stand-ins in a site registry, fetched from 127.0.0.1 into the (isolated) cache."""
    folder, entries = standins
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(entries))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    files = {f"/{e['file_name']}": (folder / e["file_name"]).read_bytes() for e in entries}
    with FixtureServer(files=files) as server:
        monkeypatch.setenv("ULBC_WEIGHTS_MIRROR", server.url(""))
        for entry in entries:
            weights.fetch(entry["name"], progress=False)
        assert sorted(p for p, _ in server.requests) == sorted(files)
    monkeypatch.delenv("ULBC_WEIGHTS_MIRROR")
    return entries


def _decode_in_fresh_process(data: bytes, tmp_path: Path, name: str) -> np.ndarray:
    path, out = tmp_path / f"{name}.ulbc", tmp_path / f"{name}.png"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "ulbc", "decode", str(path), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return np.asarray(load_rgb(out))


def test_table_none_jpeg_upscale_round_trip_in_a_fresh_process(image, table, tmp_path):
    codec = get_codec("misc", captioner_options={"path": str(table)}, base="jpeg", downscale=4)
    result = codec.encode_result(image, 30, name="images/parrot.png")
    assert codec.encode(image, 30, name="images/parrot.png") == result.data, "two encodes, one file"
    decoded = _decode_in_fresh_process(result.data, tmp_path, "upscale")
    # The decoder is the base image's decode, up-sampled: recompute it from the parts.
    container = bitstream.parse(result.data)
    parts = misc_codec.parse_params(container.params, container.payload, container.width, container.height)
    assert parts["masks"] is None and parts["texts"] == [parse_answer(ANSWER, "x").overall]
    _, base = decode_bitstream(parts["base"], device="cpu", name="base")
    assert base.shape == (18, 23, 3)  # ceil(70 / 4), ceil(90 / 4)
    assert np.array_equal(decoded, resize(base, 90, 70, "bicubic"))
    info = result.info
    assert info["objects"] == ["Parrot", "Branch", "Leaves"] and info["generator"] == "upscale, lower bound"
    assert info["base"] == {"codec": "jpeg", "width": 23, "height": 18, "bytes": len(parts["base"])}
    # The paper's formula: the base file's bits (jpeg has no estimate), no masks, 8 bits per character.
    overall = parse_answer(ANSWER, "x").overall
    assert info["bpp_paper"] == pytest.approx((8 * len(parts["base"]) + 8 * len(overall)) / (70 * 90))
    assert info["text_bytes"] < len(overall) and info["text_characters"] == len(overall)


def test_the_table_answers_by_item_name_and_its_default_row(image, table):
    codec = get_codec("misc", captioner_options={"path": str(table)})
    assert codec.encode_result(image, 30, name="a/b/parrot.png").info["objects"][0] == "Parrot"
    assert codec.encode_result(image, 30, name="kodim01").info["objects"][0] == "Cat"
    only = table.parent / "only.json"
    only.write_text(json.dumps({"parrot": ANSWER}))
    with pytest.raises(InputError, match=r"^kodim01: kodim01: no answer in the caption table .*only\.json$"):
        get_codec("misc", captioner_options={"path": str(only)}).encode(image, 30, name="kodim01")


def test_the_rate_is_the_base_codecs_and_bad_stages_are_one_line_config_errors(table):
    codec = get_codec("misc", captioner_options={"path": str(table)})
    with pytest.raises(ConfigError, match=r"^codec 'misc': the rate is the base codec's \(codec 'jpeg': "):
        codec.check_rate(500)
    assert codec.rate_label(30) == "quality30"
    for options, message in [({"base": "x265"}, "not an image codec MISC can embed"),
                             ({"base": "misc"}, "not an image codec MISC can embed"),
                             ({"base": "nope"}, "not a registered codec"),
                             ({"mapper": "sam"}, "option mapper must be one of"),
                             ({"generator_options": {"steps": 3}}, r"MISC generator 'upscale': unknown option"),
                             ({"generator": "diffusion", "generator_options": {"steps": 0}}, "option steps must be"),
                             ({"mapper": "clip-surgery", "mapper_options": {"grid": 65}}, "option grid must be")]:
        with pytest.raises(ConfigError, match=message):
            get_codec("misc", **options)


def test_tiny_diffusion_with_clip_surgery_masks_decodes_in_a_fresh_process(served, image, table, tmp_path):
    codec = get_codec("misc", captioner_options={"path": str(table)}, mapper="clip-surgery",
                      mapper_options={"weights": CLIP}, base="jpeg",
                      generator="diffusion", generator_options={"config": "tiny", "steps": 3, "local_steps": 2,
                                                                "control": True, "strength": 0.8})
    result = codec.encode_result(image, 20, name="parrot", seed=7)
    assert codec.encode(image, 20, name="parrot", seed=7) == result.data
    container = bitstream.parse(result.data)
    parts = misc_codec.parse_params(container.params, container.payload, container.width, container.height)
    assert parts["masks"].shape == (3, 8, 8) and parts["seed"] == 7
    answer = parse_answer(ANSWER, "x")
    assert parts["texts"] == [*answer.details, answer.overall]
    assert result.info["mask_bits"] == 192 and result.info["exact_across_devices"] is False
    first = _decode_in_fresh_process(result.data, tmp_path, "a")
    second = _decode_in_fresh_process(result.data, tmp_path, "b")
    here = decode_bitstream(result.data, device="cpu", name="here")[1]
    assert first.shape == image.shape and np.array_equal(first, second) and np.array_equal(first, here)
    # The generator is seeded from the file: another seed, another image from the same parts.
    reseeded = codec.encode(image, 20, name="parrot", seed=8)
    assert not np.array_equal(decode_bitstream(reseeded, device="cpu", name="seed 8")[1], here)
    # The paper's formula with maps: base bits + 192 mask bits + 8 bits per character of the details and overall.
    characters = sum(map(len, parts["texts"]))
    assert result.info["bpp_paper"] == pytest.approx((8 * len(parts["base"]) + 192 + 8 * characters) / (70 * 90))


def test_the_decoder_refuses_other_weights_and_names_a_missing_file(served, image, table, tmp_path, monkeypatch):
    codec = get_codec("misc", captioner_options={"path": str(table)}, generator="diffusion",
                      generator_options={"config": "tiny", "steps": 2, "local_steps": 0})
    data = codec.encode(image, 20, name="parrot")
    # The same names, other files: the digest of the weights in the file no longer matches.
    folder = tmp_path / "other"
    entries = write_diffusion_standins(folder, seed=5)
    registry = tmp_path / "other.yaml"
    registry.write_text(yaml.safe_dump(entries + [e for e in served if e["name"] == CLIP]))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    isolate_weights(monkeypatch, tmp_path / "other-cache", tmp_path / "torch")
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    for entry in entries:
        weights.import_file(folder / entry["file_name"], entry["name"])
    with pytest.raises(BitstreamError, match=r"not the ones the file was made for"):
        decode_bitstream(data, device="cpu", name="f.ulbc")
    # No file at all: the weights manager's one line, from the CLI too.
    isolate_weights(monkeypatch, tmp_path / "empty-cache", tmp_path / "torch")
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    path = tmp_path / "f.ulbc"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "ulbc", "decode", str(path), str(tmp_path / "f.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "misc-tiny-unet" in proc.stderr and "ulbc weights" in proc.stderr and "Traceback" not in proc.stderr


def test_the_real_configuration_without_its_weights_fails_in_one_line(image, table, tmp_path):
    table_arg = json.dumps({"captioner_options": {"path": str(table)}, "generator": "diffusion"})
    source = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(image).save(source)
    proc = subprocess.run([sys.executable, "-m", "ulbc", "encode", "--codec", "misc", "--options", table_arg,
                           str(source), str(tmp_path / "out.ulbc")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "sd21-base-unet" in proc.stderr and "ulbc weights fetch sd21-base-unet" in proc.stderr
    assert not (tmp_path / "out.ulbc").exists()


def _forge(data: bytes, params: bytes | None = None, payload: bytes | None = None) -> bytes:
    container = bitstream.parse(data)
    return bitstream.Container(container.codec_id, container.width, container.height,
                               container.params if params is None else params,
                               container.payload if payload is None else payload).to_bytes()


def test_damaged_fields_are_one_line_errors(image, table):
    codec = get_codec("misc", captioner_options={"path": str(table)})
    data = codec.encode(image, 20, name="parrot")
    container = bitstream.parse(data)
    params, payload = container.params, container.payload
    base_length, start = bitstream.decode_varint(payload, 0, "")
    cases = {
        "format": (bytes([9]) + params[1:], None, "parameter format 9"),
        "objects": (params[:5] + bytes([2, 8]) + params[6:], None, "declares 2 masks"),
        "generator": (params[:-2] + bytes([77, 0]), None, "unknown MISC generator id 77"),
        "trailing": (params + b"\0", None, "bytes after the generator"),
        "filter": (params[:-1] + bytes([9]), None, "unknown up-sampling filter 9"),
        "base length": (None, bitstream.encode_varint(10 ** 6) + payload[start:], "do not fit"),
        "base": (None, payload[:start] + bytes(base_length) + payload[start + base_length:], "base image"),
        "text": (None, payload[: start + base_length] + "two\nlines".encode(), "expected 1"),
    }
    for label, (new_params, new_payload, message) in cases.items():
        forged = _forge(data, new_params, new_payload)
        if label == "text":
            forged = _forge(data, params[:6] + bytes([0]) + params[7:], new_payload)  # utf8 text
        with pytest.raises(BitstreamError, match=message) as caught:
            decode_bitstream(forged, device="cpu", name="f.ulbc")
        assert "\n" not in str(caught.value), label
    # A base image larger than the image it stands for is refused before it is decoded.
    big = get_codec("jpeg").encode(np.zeros((80, 100, 3), np.uint8), 20)
    with pytest.raises(BitstreamError, match=r"base image \(100x80\) is larger than the image \(90x70\)"):
        decode_bitstream(_forge(data, None, bitstream.encode_varint(len(big)) + big + payload[start + base_length:]),
                         device="cpu", name="f.ulbc")


# -- CLIP Surgery's parts ----------------------------------------------------------------------------
def test_feature_surgery_removes_what_the_objects_share():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 16, 8, generator=generator)
    texts = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    similarity = mappers.feature_surgery(tokens, texts)
    assert similarity.shape == (1, 16, 3)
    assert torch.allclose(similarity.sum(dim=-1), torch.zeros(1, 16), atol=1e-6)  # the mean is gone
    # Adding the same direction to every text embedding changes nothing.
    shifted = mappers.feature_surgery(tokens, texts + texts.mean(dim=0, keepdim=True))
    plain = tokens / tokens.norm(dim=-1, keepdim=True) @ (texts - texts.mean(dim=0)).T
    assert torch.allclose(similarity, plain, atol=1e-6) and torch.allclose(shifted, plain, atol=1e-6)


def test_block_masks_threshold_the_normalised_map():
    similarity = torch.zeros(1, 16, 3)
    similarity[0, :, 0] = torch.arange(16.0)  # rises along rows: the lower half is above 0.5
    similarity[0, 5, 1] = 1.0  # one hot token
    masks = mappers.block_masks(similarity, 4, 0.5)
    assert masks.shape == (1, 3, 4, 4) and masks.dtype == torch.bool
    assert masks[0, 0, 2:].all() and not masks[0, 0, :2].any()
    assert masks[0, 1].sum() == 1 and masks[0, 1, 1, 1]
    assert not masks[0, 2].any()  # a flat map marks nothing
    with pytest.raises(InputError, match="not a square grid"):
        mappers.block_masks(torch.zeros(1, 15, 3), 4, 0.5)


def test_value_attention_is_what_the_surgery_path_adds(served):
    model = mappers.load_clip(weights.require(CLIP), weights.file_sha256(CLIP))
    block = model.visual.transformer.resblocks[-1]
    x = torch.randn(2, 5, 64)
    width = 64
    v = x @ block.attn.in_proj_weight[2 * width:].T + block.attn.in_proj_bias[2 * width:]
    expected = block.attn.out_proj((v @ v.transpose(1, 2) / width ** 0.5).softmax(-1) @ v)  # one head
    assert torch.allclose(mappers._value_attention(block, x), expected, atol=1e-5)
    # Surgery on no layers would be plain CLIP; the surgery path over the last blocks differs from it.
    pixels = torch.randn(1, 3, 64, 64)
    tokens = mappers.surgery_tokens(model, pixels, 2)
    assert tokens.shape == (1, 16, 32)
    answer = parse_answer(ANSWER, "x")
    masks = get_codec("misc", mapper="clip-surgery", mapper_options={"weights": CLIP}).mapper.maps(
        np.zeros((40, 40, 3), np.uint8) + 100, answer)
    assert masks.shape == (3, 8, 8) and masks.dtype == bool


@pytest.mark.slow
def test_a_study_with_misc_reports_bpp_paper_and_perceptual_metrics(tmp_path, photo, monkeypatch, table):
    """A study config with misc (table + none + jpeg + upscale, all offline) next to jpeg: bpp from
    the file, bpp_paper, PSNR, FLIP, LPIPS and FID (stand-in backbones)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from standin_weights import write_standins
    from test_workflow import snakemake, write_study

    registry, names = write_standins(tmp_path / "standins", ["torchvision-alexnet", "inception-v3-fid"])
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    for entry in yaml.safe_load(registry.read_text()):
        weights.import_file(tmp_path / "standins" / entry["file_name"], entry["name"])
    metrics = ["psnr", "flip", "lpips", "fid"]
    options = {"lpips": {"weights": names["torchvision-alexnet"]},
               "fid": {"weights": names["inception-v3-fid"], "patch_size": 16, "min_patches": 20}}
    methods = {"jpeg": {"rates": [10, 60]},
               "misc": {"rates": [20, 60], "options": {"captioner_options": {"path": str(table)}, "downscale": 2}}}
    config = write_study(tmp_path, photo, methods=methods, metrics=metrics, metric_options=options)
    snakemake(tmp_path, config, "--cores", "2")
    out = tmp_path / "results" / "e2e"
    rows = pq.read_table(out / "metrics.parquet").to_pandas()
    assert (rows["status"] == "ok").all() and len(rows) == 3 * 4
    ours = rows[rows["method"] == "misc"]
    assert (ours["bpp"] == 8 * ours["bytes"] / (ours["width"] * ours["height"])).all()
    assert ours["bpp_paper"].notna().all() and rows.loc[rows["method"] == "jpeg", "bpp_paper"].isna().all()
    assert ours[["psnr_rgb", "flip", "lpips"]].notna().all().all()
    assert json.loads(ours["encode_info"].iloc[0])["generator"] == "upscale, lower bound"
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[summary["method"] == "misc", ["bpp_paper", "flip", "lpips", "fid"]].notna().all().all()
    # The tables say that no generative model decoded these files.
    page = (out / "summary.html").read_text()
    assert "tiny misc: decoded by up-sampling the base image, without MISC&#x27;s generative model: a lower bound" \
        in page or "tiny misc: decoded by up-sampling the base image, without MISC's generative model" in page
