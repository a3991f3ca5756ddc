"""LPIPS, DISTS and FLIP against their reference packages, offline, with randomly initialised backbones.

The backbone files go through ulbc's weights manager exactly as a fetched torchvision file would.
The reference values come from the packages built the way their authors wrote them (their own
torchvision factory call, their own weight loading), with only torchvision's factory answering
with the same random network, so ulbc's key mapping is checked, not reused.
"""

from __future__ import annotations

import hashlib
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from ulbc import weights
from ulbc.errors import ConfigError, InputError
from ulbc.metrics import METRICS, compute_metrics
from ulbc.metrics.perceptual import LPIPS_MIN_SIDE
from ulbc.weights import WeightFile, WeightsMissingError

TOLERANCE = 1e-5
ARCHITECTURES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}


def distorted(image: np.ndarray, seed: int, amount: float = 24.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, amount, image.shape)
    return np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def torchvision_with(architecture: str, state: dict):
    """torchvision's own network with the test weights, loaded by torchvision's load_state_dict."""
    network = getattr(torchvision.models, architecture)(weights=None)
    result = network.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert all(key.startswith("classifier.") for key in result.missing_keys)
    return network.eval()


# -- test weight files ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Random torchvision state dicts: SqueezeNet whole (5 MB, classifier included), AlexNet and
    VGG16 as their ``features`` part only (the part the metrics read; whole, they are 233 MB and
    528 MB). Each is registered and imported into an isolated weights cache once."""
    folder = tmp_path_factory.mktemp("backbones")
    states, names = {}, {}
    torch.manual_seed(0)
    for net, architecture in ARCHITECTURES.items():
        state = getattr(torchvision.models, architecture)(weights=None).state_dict()
        if net != "squeeze":
            state = {key: value for key, value in state.items() if key.startswith("features.")}
        states[net] = state
    # A file of the right keys but a wrong shape, and one that is no torch file at all.
    misshapen = dict(states["alex"])
    misshapen["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    files = {net: folder / f"{net}.pth" for net in (*ARCHITECTURES, "misshapen", "garbage")}
    for net in ARCHITECTURES:
        torch.save(states[net], files[net])
    torch.save(misshapen, files["misshapen"])
    files["garbage"].write_bytes(b"not a torch file\n" * 8)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ULBC_WEIGHTS", str(folder / "cache"))
        patch.setenv("TORCH_HOME", str(folder / "torch"))
        patch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
        try:
            for key, path in files.items():
                name = f"test-perceptual-{key}"
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                weights.register_weights(WeightFile(name=name, file_name=f"{name}.pth", urls=(), sha256=digest,
                                                    size=None, licence="test", used_by=("lpips", "dists"),
                                                    description="random test backbone"))
                names[key] = name
                weights.import_file(path, name)
            yield types.SimpleNamespace(states=states, names=names, files=files)
        finally:
            for name in names.values():
                weights.unregister_weights(name)


@pytest.fixture(scope="module")
def pair(photo):
    return photo, distorted(photo, seed=3)


# -- LPIPS ----------------------------------------------------------------------------------------------
def reference_lpips(monkeypatch, net: str, state: dict, reference: np.ndarray, reconstruction: np.ndarray) -> float:
    import lpips
    import lpips.pretrained_networks as pretrained

    factory = types.SimpleNamespace(**{ARCHITECTURES[net]: lambda **_: torchvision_with(ARCHITECTURES[net], state)})
    monkeypatch.setattr(pretrained, "tv", factory)
    network = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=False, verbose=False)
    with torch.no_grad():
        return float(network(lpips.im2tensor(reference), lpips.im2tensor(reconstruction)).item())


@pytest.mark.parametrize("net", list(ARCHITECTURES))
def test_lpips_equals_the_lpips_package(monkeypatch, backbones, pair, net):
    metric = METRICS["lpips"](net=net, weights=backbones.names[net])
    value = metric.compute(*pair)["lpips"]
    expected = reference_lpips(monkeypatch, net, backbones.states[net], *pair)
    assert value > 1e-3 and expected > 1e-3
    assert value == pytest.approx(expected, abs=TOLERANCE)
    assert metric.compute(*pair)["lpips"] == value  # same network, same CPU result
    assert metric.compute(pair[0], pair[0].copy())["lpips"] == pytest.approx(0.0, abs=1e-7)


def test_lpips_names_and_records_what_it_loads(backbones):
    import lpips

    assert METRICS["lpips"]().weight_names() == ("torchvision-alexnet",)
    assert METRICS["lpips"](net="vgg").weight_names() == ("torchvision-vgg16",)
    assert METRICS["lpips"](net="squeeze").weight_names() == ("torchvision-squeezenet1_1",)
    metric = METRICS["lpips"](net="squeeze", weights=backbones.names["squeeze"])
    assert metric.weight_names() == (backbones.names["squeeze"],)
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "squeeze.pth"
    info = metric.info()
    assert info["options"] == {"net": "squeeze", "weights": backbones.names["squeeze"]}
    assert info["weights"] == {backbones.names["squeeze"]: hashlib.sha256(backbones.files["squeeze"].read_bytes())
                               .hexdigest()}
    assert info["lpips"] == "0.1.4"
    assert info["lpips_linear_layers"] == {"file": "lpips/weights/v0.1/squeeze.pth",
                                           "sha256": hashlib.sha256(heads.read_bytes()).hexdigest()}


@pytest.mark.parametrize("net", list(ARCHITECTURES))
def test_lpips_minimum_side_is_the_backbones(backbones, net):
    """Below the declared side the backbone itself fails (so NaN is right); at it, it runs."""
    metric = METRICS["lpips"](net=net, weights=backbones.names[net])
    side = LPIPS_MIN_SIDE[net]
    small = np.random.default_rng(1).integers(0, 256, (side - 1, 40, 3), dtype=np.uint8)
    assert math.isnan(metric.compute(small, small[::-1].copy())["lpips"])
    with pytest.raises(RuntimeError, match="too small"), torch.no_grad():
        metric.network()(metric._tensor(small), metric._tensor(small))
    fits = np.random.default_rng(1).integers(0, 256, (side, 40, 3), dtype=np.uint8)
    assert math.isfinite(metric.compute(fits, fits[::-1].copy())["lpips"])


# -- DISTS ----------------------------------------------------------------------------------------------
def test_dists_equals_dists_pytorch(monkeypatch, backbones, pair):
    from DISTS_pytorch import DISTS_pt

    metric = METRICS["dists"](weights=backbones.names["vgg"])
    value = metric.compute(*pair)["dists"]
    monkeypatch.setattr(DISTS_pt, "models", types.SimpleNamespace(
        vgg16=lambda **_: torchvision_with("vgg16", backbones.states["vgg"])))
    network = DISTS_pt.DISTS()  # loads alpha/beta its own way (from sys.prefix)

    def as_unit(image):
        return torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0).float() / 255.0

    expected = float(network(as_unit(pair[0]), as_unit(pair[1])).item())
    assert value > 1e-3 and expected > 1e-3
    assert value == pytest.approx(expected, abs=TOLERANCE)
    assert metric.compute(pair[0], pair[0].copy())["dists"] == pytest.approx(0.0, abs=1e-5)


def test_dists_records_its_weights(backbones):
    from DISTS_pytorch import DISTS_pt

    metric = METRICS["dists"](weights=backbones.names["vgg"])
    assert METRICS["dists"]().weight_names() == ("torchvision-vgg16",)
    info = metric.info()
    alpha_beta = Path(DISTS_pt.__file__).parent / "weights.pt"
    assert info["dists_pytorch"] == "0.1"
    assert info["dists_alpha_beta"]["sha256"] == hashlib.sha256(alpha_beta.read_bytes()).hexdigest()
    assert info["weights"] == {backbones.names["vgg"]: hashlib.sha256(backbones.files["vgg"].read_bytes()).hexdigest()}


# -- weights that do not fit, or are not there ----------------------------------------------------------
@pytest.mark.parametrize("metric, options, key, problem", [
    ("lpips", {"net": "alex"}, "squeeze",
     r"not a torchvision alexnet state dict \(missing features\.3\.weight and 7 more; unexpected features\.3\.squeeze"),
    ("dists", {}, "alex",
     r"not a torchvision vgg16 state dict \(missing features\.2\.weight and 21 more; unexpected features\.3\.weight"),
    ("lpips", {"net": "alex"}, "misshapen", r"features\.3\.weight is 192x64x3x3, expected 192x64x5x5"),
    ("lpips", {"net": "squeeze"}, "garbage", r"not a torchvision squeezenet1_1 state dict"),
])
def test_backbone_files_that_do_not_fit_are_refused(backbones, pair, metric, options, key, problem):
    instance = METRICS[metric](weights=backbones.names[key], **options)
    with pytest.raises(InputError, match=problem) as caught:
        instance.compute(*pair)
    message = str(caught.value)
    assert "\n" not in message and f"test-perceptual-{key}.pth" in message


@pytest.mark.parametrize("metric, options, file_name, entry", [
    ("lpips", {}, "alexnet-owt-7be5be79.pth", "torchvision-alexnet"),
    ("lpips", {"net": "squeeze"}, "squeezenet1_1-b8a52dc0.pth", "torchvision-squeezenet1_1"),
    ("dists", {}, "vgg16-397923af.pth", "torchvision-vgg16"),
])
def test_a_missing_backbone_is_the_weights_managers_one_line(monkeypatch, tmp_path, pair, metric, options,
                                                             file_name, entry):
    monkeypatch.setenv("ULBC_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    instance = METRICS[metric](**options)
    with pytest.raises(WeightsMissingError) as caught:
        instance.compute(*pair)
    message = str(caught.value)
    assert "\n" not in message and file_name in message and f"ulbc weights fetch {entry}" in message


@pytest.mark.parametrize("metric, options, problem", [
    ("lpips", {"net": "resnet"}, "option net must be one of alex, vgg, squeeze"),
    ("lpips", {"net": 1}, "option net must be one of alex, vgg, squeeze"),
    ("lpips", {"weights": "nope"}, "unknown weights 'nope'"),
    ("lpips", {"version": "0.0"}, r"unknown option\(s\) \['version'\]"),
    ("dists", {"weights": "nope"}, "unknown weights 'nope'"),
    ("dists", {"weights": 3}, "option weights must be a string"),
    ("flip", {"pixels_per_degree": 0}, "option pixels_per_degree must be a number > 0"),
    ("flip", {"pixels_per_degree": -67.0}, "option pixels_per_degree must be a number > 0"),
    ("flip", {"pixels_per_degree": "many"}, "option pixels_per_degree must be a number"),
    ("flip", {"ppd": 67}, r"unknown option\(s\) \['ppd'\]"),
])
def test_bad_options_are_one_line_config_errors(metric, options, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        METRICS[metric](**options)
    assert "\n" not in str(caught.value)


# -- FLIP -----------------------------------------------------------------------------------------------
def test_flip_equals_flip_evaluator(pair):
    import flip_evaluator

    reference, reconstruction = pair
    value = METRICS["flip"]().compute(reference, reconstruction)["flip"]
    _, expected, used = flip_evaluator.evaluate(reference / 255.0, reconstruction / 255.0, "LDR",
                                                parameters={"ppd": 67.0})
    assert used["ppd"] == 67.0
    assert 0.0 < value < 1.0
    assert value == pytest.approx(expected, abs=1e-7)
    assert METRICS["flip"]().compute(reference, reference.copy())["flip"] == 0.0


def test_flip_pixels_per_degree_changes_the_value(pair):
    default = METRICS["flip"]().compute(*pair)["flip"]
    close = METRICS["flip"](pixels_per_degree=30.0).compute(*pair)["flip"]
    assert METRICS["flip"](pixels_per_degree=67).compute(*pair)["flip"] == default
    assert abs(close - default) > 1e-3
    assert METRICS["flip"](pixels_per_degree=30.0).info()["options"] == {"pixels_per_degree": 30.0}


def test_flip_turns_the_packages_exit_into_a_config_error(pair):
    metric = METRICS["flip"]()
    metric.options["pixels_per_degree"] = -1.0  # past the option check, as far as flip_evaluator's own
    with pytest.raises(ConfigError, match="flip_evaluator refused its arguments .*pixels per degree must be "
                                          "positive") as caught:
        metric.compute(*pair)
    assert "\n" not in str(caught.value)


# -- all three in one row -------------------------------------------------------------------------------
def test_a_row_holds_exactly_the_declared_columns(backbones, pair):
    metrics = [METRICS["lpips"](net="squeeze", weights=backbones.names["squeeze"]),
               METRICS["dists"](weights=backbones.names["vgg"]), METRICS["flip"]()]
    row = compute_metrics(metrics, *pair)
    assert set(row) == {"lpips", "dists", "flip"}
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in row.values())
    assert {m.name: m.uses_gpu for m in metrics} == {"lpips": True, "dists": True, "flip": False}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_networks_run_on_cuda_like_on_the_cpu(backbones, pair):
    for name, options in (("lpips", {"net": "alex", "weights": backbones.names["alex"]}),
                          ("dists", {"weights": backbones.names["vgg"]})):
        on_cpu = METRICS[name](**options).compute(*pair)[name]
        gpu_metric = METRICS[name](device="cuda", **options)
        assert next(gpu_metric.network().parameters()).device.type == "cuda"
        assert gpu_metric.compute(*pair)[name] == pytest.approx(on_cpu, abs=1e-4)
