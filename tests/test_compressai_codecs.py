"""CompressAI's codecs: tiny random models in the zoo's file layout, served through the weights
manager from 127.0.0.1, against CompressAI's own compress/decompress; the latent checksum against
perturbed decoders; user checkpoints; the zoo table against compressai.zoo."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ulbc import bitstream, weights
from ulbc.errors import BitstreamError, ConfigError, UlbcError

from standin_weights import compressai_standin_state, write_compressai_standins
from test_download import FixtureServer
from test_weights import isolate_weights

torch = pytest.importorskip("torch")
pytest.importorskip("compressai")

#: Codec name -> architecture it runs (``compressai`` takes any: here the one no zoo codec has).
ARCHS = {"bmshj2018-factorized": "bmshj2018-factorized", "bmshj2018-hyperprior": "bmshj2018-hyperprior",
         "mbt2018-mean": "mbt2018-mean", "mbt2018": "mbt2018", "cheng2020-anchor": "cheng2020-anchor",
         "cheng2020-attn": "cheng2020-attn", "compressai": "bmshj2018-factorized-relu"}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    isolate_weights(monkeypatch, tmp_path / "weights", tmp_path / "torch")
    from ulbc import compressai_runtime

    compressai_runtime._models.clear()
    yield
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
    weights._sync_site_registry()
    compressai_runtime._models.clear()


@pytest.fixture
def image(photo):
    return np.ascontiguousarray(photo[:70, :90])  # not a multiple of 64: padded, then cropped back


def served_standins(tmp_path, monkeypatch, architectures, qualities=(1, 2)):
    """Stand-ins of each architecture registered in a site registry and fetched from 127.0.0.1;
    returns the checkpoint pattern of each and the registry entries."""
    if isinstance(architectures, str):
        architectures = [architectures]
    patterns, entries = {}, []
    for architecture in architectures:
        entries += write_compressai_standins(tmp_path / "standins", architecture, qualities)[1]
        patterns[architecture] = "standin-compressai-" + architecture + "-q{quality}"
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(entries, sort_keys=False))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    files = {f"/{e['file_name']}": (tmp_path / "standins" / e["file_name"]).read_bytes() for e in entries}
    with FixtureServer(files=files) as server:
        monkeypatch.setenv("ULBC_WEIGHTS_MIRROR", server.url(""))
        for entry in entries:
            weights.fetch(entry["name"], progress=False)
        assert sorted(p for p, _ in server.requests) == sorted(files)
    monkeypatch.delenv("ULBC_WEIGHTS_MIRROR")  # from here on only the verified cache serves them
    return (patterns[architectures[0]] if len(architectures) == 1 else patterns), entries


def compressai_reference(architecture, checkpoint: Path, image: np.ndarray) -> tuple[np.ndarray, int]:
    """CompressAI's own evaluation of ``image`` (compressai.utils.eval_model's inference): pixels
    and the bytes of its strings."""
    import torch.nn.functional as F
    from compressai.ops import compute_padding
    from compressai.zoo.image import model_architectures

    from ulbc.compressai_runtime import state_dict_of

    cls = model_architectures.get(architecture) or model_architectures["bmshj2018_factorized_relu"]
    net = cls.from_state_dict(state_dict_of(torch.load(checkpoint, weights_only=True), checkpoint))
    net.update(force=True)
    net.eval()
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
    pad, unpad = compute_padding(x.shape[2], x.shape[3], min_div=64)
    with torch.no_grad():
        out = net.compress(F.pad(x, pad, mode="constant", value=0))
        x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
    x_hat = (F.pad(x_hat, unpad)[0] * 255).clamp(0, 255).round().to(torch.uint8)
    return x_hat.permute(1, 2, 0).numpy(), sum(len(s[0]) for s in out["strings"])


def test_cli_round_trip_equals_compressai_and_bpp_is_the_file(image, tmp_path, monkeypatch, capsys):
    """Every architecture: `ulbc encode` with stand-in weights fetched through the weights manager,
    then `ulbc decode` in a fresh process (the file and the weights cache only) gives CompressAI's
    own compress/decompress pixels; bpp is the file's."""
    import os

    from PIL import Image

    from ulbc import bitstream
    from ulbc.cli import main as ulbc_main
    from ulbc.imageio import load_rgb

    patterns, _ = served_standins(tmp_path, monkeypatch, sorted(set(ARCHS.values())))
    source = tmp_path / "in.png"
    Image.fromarray(image).save(source)
    decodes = []
    for name, architecture in sorted(ARCHS.items()):
        options = {"checkpoint": patterns[architecture], **({"arch": architecture} if name == "compressai" else {})}
        stream = tmp_path / f"{name}.ulb"
        capsys.readouterr()
        ulbc_main(["encode", "--codec", name, "--rate", "2", "--options", json.dumps(options), str(source),
                   str(stream)])
        report = json.loads(capsys.readouterr().out)
        data = stream.read_bytes()
        # bpp is the file's: the container and the codec's parameters are all it adds to CompressAI's
        # strings (which CompressAI's own bpp counts alone); the likelihood estimate stands beside it.
        assert report["bytes"] == len(data) and report["bpp"] == 8 * len(data) / (image.shape[0] * image.shape[1])
        assert report["encoder"]["bpp_estimated"] > 0
        decodes.append((name, architecture, stream, tmp_path / f"{name}.png"))
    script = "from ulbc.cli import main\n" + "".join(
        f"main(['decode', {str(s)!r}, {str(p)!r}])\n" for _, _, s, p in decodes)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, architecture, stream, png in decodes:
        checkpoint = tmp_path / "standins" / f"{architecture}-q2.pth.tar"
        expected, string_bytes = compressai_reference(architecture, checkpoint, image)
        assert np.array_equal(load_rgb(png), expected), name
        container = bitstream.parse(stream.read_bytes())
        assert len(container.payload) == string_bytes, name  # the payload is CompressAI's strings, nothing else
        assert stream.stat().st_size - string_bytes == container.overhead


def test_encoder_reports_the_estimate_weights_and_checksum(image, tmp_path, monkeypatch):
    from ulbc.codecs import decode_bitstream, get_codec

    pattern, entries = served_standins(tmp_path, monkeypatch, "mbt2018-mean", qualities=(3,))
    codec = get_codec("mbt2018-mean", checkpoint=pattern)
    result = codec.encode_result(image, 3)
    info = result.info
    assert info["weights"] == {"file": "standin-compressai-mbt2018-mean-q3", "sha256": entries[0]["sha256"]}
    assert info["bpp_estimated"] > 0 and math.isfinite(info["bpp_estimated"])
    assert len(info["latent_checksum"]) == 8
    assert codec.weight_names(3) == ["standin-compressai-mbt2018-mean-q3"]
    assert get_codec("mbt2018-mean").weight_names(3) == ["compressai-mbt2018-mean-mse-q3"]
    assert get_codec("mbt2018-mean", metric="ms-ssim").weight_names(8) == ["compressai-mbt2018-mean-ms-ssim-q8"]
    assert codec.encode(image, 3) == result.data  # deterministic
    used, decoded = decode_bitstream(result.data)
    assert used.name == "mbt2018-mean" and decoded.shape == image.shape


def test_a_batch_codes_each_item_as_alone(photo, tmp_path, monkeypatch):
    from ulbc.codecs import decode_bitstream, get_codec

    pattern, _ = served_standins(tmp_path, monkeypatch, "mbt2018", qualities=(1,))
    codec = get_codec("mbt2018", checkpoint=pattern, batch_size=3)
    images = [np.ascontiguousarray(photo[i * 8 : i * 8 + 48, :64]) for i in range(3)]
    batch = codec.encode_batch(images, 1, seeds=[0, 0, 0], names=["a", "b", "c"])
    alone = [codec.encode(img, 1) for img in images]
    for one, together, img in zip(alone, batch, images):
        _, from_batch = decode_bitstream(together.data)
        _, from_alone = decode_bitstream(one)
        assert from_batch.shape == img.shape
        assert one == together.data and np.array_equal(from_batch, from_alone)


# -- desync detection ---------------------------------------------------------------------------------
def _nudge_up(tensor):
    return torch.nextafter(tensor, torch.full_like(tensor, math.inf))


def perturb(net, architecture, how):
    """Make a decoder's entropy model differ from the encoder's by the smallest amounts."""
    if how == "medians":  # the factorized bottleneck's offsets, one ulp each
        net.entropy_bottleneck.quantiles.data = _nudge_up(net.entropy_bottleneck.quantiles.data)
    elif how == "means":  # the Gaussian means, one ulp each (h_s output or the entropy parameters)
        target = "entropy_parameters" if hasattr(net, "entropy_parameters") else "h_s"
        module = getattr(net, target)

        def hook(_module, _inputs, output):
            scales, means = output.chunk(2, 1)
            return torch.cat([scales, _nudge_up(means)], dim=1)

        module.register_forward_hook(hook)
    elif how == "scale-table":  # one scale across a table boundary: the next CDF
        original = net.gaussian_conditional.build_indexes

        def build_indexes(scales):
            indexes = original(scales)
            flat = indexes.view(-1)
            flat[0] = (flat[0] + 1) % len(net.gaussian_conditional.scale_table)
            return indexes

        net.gaussian_conditional.build_indexes = build_indexes


@pytest.mark.parametrize("name,how", [("bmshj2018-factorized", "medians"), ("bmshj2018-hyperprior", "scale-table"),
                                      ("mbt2018-mean", "means"), ("mbt2018", "means"), ("mbt2018", "scale-table"),
                                      ("cheng2020-anchor", "means"), ("cheng2020-attn", "scale-table")])
def test_latent_checksum_catches_a_decoder_out_of_step(name, how, image, tmp_path):
    from ulbc import compressai_runtime
    from ulbc.codecs import decode_bitstream, get_codec

    architecture = ARCHS[name]
    pattern, _ = write_compressai_standins(tmp_path / "standins", architecture, [1])
    data = get_codec(name, checkpoint=pattern).encode(image, 1)
    _, clean = decode_bitstream(data)  # the unperturbed decoder agrees
    (model,) = compressai_runtime._models.values()
    perturb(model.net, architecture, how)
    with pytest.raises(BitstreamError, match=r"^<bitstream>: the decoded latent does not match the encoder's "
                                             r"checksum: .* refusing to return corrupted pixels$"):
        decode_bitstream(data)


def test_decoder_refuses_other_weights_and_names_missing_ones(image, tmp_path, monkeypatch):
    from ulbc.codecs import decode_bitstream, get_codec

    pattern, _ = write_compressai_standins(tmp_path / "standins", "bmshj2018-hyperprior", [1])
    path = Path(pattern.replace("{quality}", "1"))
    data = get_codec("bmshj2018-hyperprior", checkpoint=pattern).encode(image, 1)
    torch.save(compressai_standin_state("bmshj2018-hyperprior", seed=99), path)  # retrained in place
    from ulbc import compressai_runtime

    compressai_runtime._models.clear()
    with pytest.raises(BitstreamError, match=r"made with checkpoint .*hyperprior-q1.pth.tar of sha256 [0-9a-f]{16}\.\.\., "
                                             r"but .* has sha256 [0-9a-f]{64}$"):
        decode_bitstream(data)
    path.unlink()
    with pytest.raises(BitstreamError, match=r"made with checkpoint .*q1.pth.tar \(sha256 [0-9a-f]{16}\.\.\.\), "
                                             r"which is not on this machine$"):
        decode_bitstream(data)
    # A damaged reference is never echoed into a message as a line break.
    damaged = bitstream.seal(data[:-4].replace(b"hyperprior-q1", b"hyperprior\nq1"))
    with pytest.raises(BitstreamError) as caught:
        decode_bitstream(damaged)
    assert "\n" not in str(caught.value) and "non-printable" in str(caught.value)
    with pytest.raises(ConfigError, match=r"^codec 'bmshj2018-hyperprior': checkpoint '.*\\t.*' has non-printable"):
        get_codec("bmshj2018-hyperprior", checkpoint="a\tb-q{quality}.pth").check_resources(1)


def test_zoo_weights_missing_is_one_line_naming_file_url_and_import(image):
    from ulbc.codecs import get_codec

    codec = get_codec("cheng2020-anchor", metric="ms-ssim")
    with pytest.raises(UlbcError) as caught:
        codec.encode(image, 2, name="kodim01.png")
    text = str(caught.value)
    assert "\n" not in text and text.startswith("kodim01.png: cheng2020_anchor-ms-ssim-2-")
    assert "https://compressai.s3.amazonaws.com/models/v1/cheng2020_anchor-ms-ssim-2-" in text
    assert "ulbc weights fetch compressai-cheng2020-anchor-ms-ssim-q2" in text and "ulbc weights import PATH" in text


def test_the_zoo_table_is_compressais():
    from compressai.zoo.image import model_urls

    for architecture, by_metric in model_urls.items():
        for metric, by_quality in by_metric.items():
            for quality, url in by_quality.items():
                entry = weights.get_weight_file(weights.compressai_zoo_name(architecture, metric, quality))
                assert entry.urls == (url,) and url.endswith("/" + entry.file_name)
                assert entry.file_name.split("-")[-1].startswith(entry.sha256)  # torch hub's hash prefix
    assert sum(1 for name in weights.registry() if name.startswith("compressai-")) == 88


def test_architecture_tables_agree():
    from compressai.zoo.image import cfgs

    from ulbc.codecs import CODECS, compressai_zoo

    assert set(compressai_zoo.ARCHITECTURES) == set(cfgs)
    for name, architecture in ARCHS.items():
        if name != "compressai":
            assert CODECS[name].architecture == architecture
            high = 6 if name.startswith("cheng2020") else 8
            assert CODECS[name].rate_range == (1, high) and CODECS[name].default_rates == tuple(range(1, high + 1))


# -- user checkpoints -------------------------------------------------------------------------------------
def training_checkpoint(tmp_path, architecture="mbt2018-mean") -> Path:
    """What CompressAI's examples/train.py saves after DataParallel training: a wrapped, prefixed
    state dict whose entropy models were never updated."""
    import copy

    from ulbc.compressai_runtime import _model_class

    torch.manual_seed(5)
    net = _model_class(architecture)(8, 12)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "checkpoint_best_loss.pth.tar"
    torch.save({"epoch": 3, "state_dict": state, "loss": torch.tensor(1.5), "optimizer": {"lr": 1e-4},
                "lr_scheduler": copy.deepcopy({"last_epoch": 3})}, path)
    return path


def test_a_training_checkpoint_is_unwrapped_updated_and_recorded(image, tmp_path):
    from ulbc.codecs import decode_bitstream, get_codec

    path = training_checkpoint(tmp_path)
    codec = get_codec("compressai", arch="mbt2018-mean", checkpoint=str(path))
    result = codec.encode_result(image, 1)
    assert result.info["weights"] == {"file": str(path.resolve()), "sha256": weights.path_sha256(path)}
    assert codec.weight_names(1) == [] and codec.checkpoint_files(1) == [str(path)]
    _, decoded = decode_bitstream(result.data)
    expected, _ = compressai_reference("mbt2018-mean", path, image)
    assert np.array_equal(decoded, expected)


def test_checkpoint_problems_are_one_line(tmp_path, image):
    from ulbc.codecs import get_codec

    codec = get_codec("compressai", arch="cheng2020-anchor", checkpoint=str(tmp_path / "nope-q{quality}.pth"))
    with pytest.raises(ConfigError, match=r"checkpoint .*nope-q3.pth \(quality 3\) is neither a file nor a registered"):
        codec.check_resources(3)
    with pytest.raises(ConfigError, match=r"^codec 'compressai': needs checkpoint:"):
        get_codec("compressai").check_resources(1)
    wrong = training_checkpoint(tmp_path)  # an mbt2018-mean checkpoint given as cheng2020-anchor
    with pytest.raises(UlbcError, match=r"^x.png: .*checkpoint_best_loss.pth.tar: is not a cheng2020-anchor checkpoint"):
        get_codec("compressai", arch="cheng2020-anchor", checkpoint=str(wrong)).encode(image, 1, name="x.png")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UlbcError, match=r"junk.pth.tar: cannot be read as a PyTorch checkpoint"):
        get_codec("compressai", arch="mbt2018", checkpoint=str(junk)).encode(image, 1, name="x.png")


@pytest.mark.slow
def test_a_study_runs_zoo_layout_standins_and_a_user_checkpoint(tmp_path, photo, monkeypatch):
    """A study config with a zoo codec on registered stand-ins (fetched from 127.0.0.1 by the
    weights job) and a user's training checkpoint; rows carry the weights' sha256 and bpp_estimated."""
    import pandas as pd
    import pyarrow.parquet as pq

    from test_workflow import snakemake, write_study

    pattern, entries = write_compressai_standins(tmp_path / "standins", "bmshj2018-hyperprior", [1, 2])
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(entries, sort_keys=False))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    checkpoint = training_checkpoint(tmp_path)
    files = {f"/{e['file_name']}": (tmp_path / "standins" / e["file_name"]).read_bytes() for e in entries}
    methods = {
        "jpeg": {"rates": [20, 80]},
        "hyperprior": {"codec": "bmshj2018-hyperprior", "rates": [1, 2],
                       "options": {"checkpoint": "standin-compressai-bmshj2018-hyperprior-q{quality}"}},
        "mine": {"codec": "compressai", "rates": [1], "options": {"arch": "mbt2018-mean", "checkpoint": str(checkpoint)}},
    }
    with FixtureServer(files=files) as server:
        monkeypatch.setenv("ULBC_WEIGHTS_MIRROR", server.url(""))
        config = write_study(tmp_path, photo, methods=methods, fetch_weights=True)
        snakemake(tmp_path, config, "--cores", "2")
        assert sorted(p for p, _ in server.requests) == sorted(files)  # the weights job, once each
    out = tmp_path / "results" / "e2e"
    rows = pq.read_table(out / "metrics.parquet").to_pandas()
    assert (rows["status"] == "ok").all() and len(rows) == 3 * 5
    learned = rows[rows["method"] != "jpeg"]
    assert learned["bpp_estimated"].notna().all() and rows.loc[rows["method"] == "jpeg", "bpp_estimated"].isna().all()
    mine = learned[learned["method"] == "mine"]
    assert {json.loads(w)["sha256"] for w in mine["codec_weights"]} == {weights.path_sha256(checkpoint)}
    zoo = learned[learned["method"] == "hyperprior"]
    by_file = {e["name"]: e["sha256"] for e in entries}
    assert all(by_file[json.loads(w)["file"]] == json.loads(w)["sha256"] for w in zoo["codec_weights"])
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[summary["method"] != "jpeg", "bpp_estimated"].notna().all()
    record = json.loads((out / "weights.json").read_text())
    assert set(record) == {e["name"] for e in entries}


def test_decodes_run_on_the_cpu_whatever_device_is_asked(image, tmp_path):
    from ulbc.codecs import get_codec
    from ulbc.runner import decode_bitstream_data

    pattern, _ = write_compressai_standins(tmp_path / "standins", "mbt2018-mean", [1])
    data = get_codec("mbt2018-mean", checkpoint=pattern).encode(image, 1)
    codec, _, decoded, device = decode_bitstream_data(data, device="cuda", name="x.ulb")
    assert device == "cpu" and not codec.gpu_decoder and codec.uses_gpu  # g_a may use a GPU, decoding never
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert np.array_equal(decode_bitstream_data(data, device="cpu", name="x.ulb")[2], decoded)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before


def test_weights_list_filters_by_pattern(capsys):
    from ulbc.cli import main

    main(["weights", "list", "compressai-mbt2018-mean-*", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 16 and {r["check"] for r in rows} == {"sha256 prefix"}
    assert all(r["status"] == "missing" and r["urls"][0].startswith(weights.COMPRESSAI_ZOO_URL) for r in rows)


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "cheng2020-attn"])
def test_zoo_weights_in_torch_hubs_cache_are_used_as_compressai_zoo_uses_them(name, image, tmp_path, monkeypatch):
    """A zoo file torch hub already holds (a stand-in under the canonical name; its registry hash is
    swapped for the stand-in's) is used in place, without an update(), and ulbc's decode equals
    compressai.zoo's own model on that file."""
    import dataclasses
    import os

    import compressai.zoo as zoo
    import torch.nn.functional as F
    from compressai.ops import compute_padding

    from ulbc.codecs import decode_bitstream, get_codec

    zoo_name = weights.compressai_zoo_name(name, "mse", 2)
    entry = weights.get_weight_file(zoo_name)
    hub = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(compressai_standin_state(name, seed=2), hub / entry.file_name)
    standin_sha = weights.path_sha256(hub / entry.file_name)
    monkeypatch.setitem(weights.WEIGHTS, zoo_name, dataclasses.replace(entry, sha256=standin_sha))

    codec = get_codec(name)
    result = codec.encode_result(image, 2)
    assert result.info["weights"] == {"file": zoo_name, "sha256": standin_sha}
    assert weights.verify(zoo_name).path == hub / entry.file_name  # used where torch hub put it
    assert not (tmp_path / "weights").exists()  # nothing copied, nothing downloaded
    _, decoded = decode_bitstream(result.data)

    net = getattr(zoo, name.replace("-", "_"))(quality=2, metric="mse", pretrained=True).eval()
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]
    pad, unpad = compute_padding(x.shape[2], x.shape[3], min_div=64)
    with torch.no_grad():
        out = net.compress(F.pad(x, pad))
        x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
    expected = (F.pad(x_hat, unpad)[0] * 255).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(decoded, expected)
    from ulbc import bitstream

    assert bitstream.parse(result.data).payload == b"".join(s[0] for s in out["strings"])
