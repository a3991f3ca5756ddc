"""ImageNet classifiers and the classification-agreement metric, offline, with random weights.

The weight files are random networks saved in the published layouts (torchvision's MobileNetV2,
efficientnet_pytorch's EfficientNet-Lite0) and go through ulbc's weights manager as a fetched file
would. Untrained BatchNorm statistics (mean 0, variance 1) let the activations of a random network
die out, so every image would get the same class; the files here therefore carry BatchNorm
statistics measured on a few photo crops, which makes the predictions depend on the image.
"""

from __future__ import annotations

import hashlib
import types

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms._presets import ImageClassification

from conftest import skimage_photo
from ulbc import weights
from ulbc.errors import ConfigError, InputError
from ulbc.imageio import load_rgb
from ulbc.metrics import METRICS, build_metrics, compute_metrics
from ulbc.tasknets.classifiers import CLASSIFIERS, ImageNetClassifier, imagenet_categories, load_classifier
from ulbc.weights import WeightFile

MODELS = {"mobilenet_v2": "torchvision-mobilenet_v2", "efficientnet_lite0": "efficientnet-lite0"}


def crop(name: str, top: int, left: int) -> np.ndarray:
    return np.ascontiguousarray(load_rgb(skimage_photo(name))[top:top + 96, left:left + 128])


def noisy(image: np.ndarray, seed: int, amount: float) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, amount, image.shape)
    return np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)


#: Crops whose features the random test heads take as their classes 0, 1, ...
PROTOTYPES = {"astronaut": ("astronaut.png", 100, 180), "coffee": ("coffee.png", 150, 200),
              "cat": ("chelsea.png", 60, 120), "rocket": ("astronaut.png", 300, 30),
              "motorcycle": ("motorcycle_left.png", 200, 300), "bricks": ("brick.png", 0, 0),
              "gravel": ("gravel.png", 200, 200), "colours": ("color.png", 100, 100)}


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    """96x128 crops of scikit-image's photos, and distorted copies."""
    found = {name: crop(*where) for name, where in PROTOTYPES.items()}
    found["astronaut_light_noise"] = noisy(found["astronaut"], 1, 4.0)
    found["astronaut_heavy_noise"] = noisy(found["astronaut"], 2, 60.0)
    return found


def as_batch(arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy()).float() / 255.0


def random_state(network: torch.nn.Module, inputs: torch.Tensor, last_linear: torch.nn.Linear, pooled,
                 seed: int) -> dict:
    """A random state dict of ``network`` that tells ``inputs`` (normalised 224x224 crops) apart.

    Each BatchNorm layer gets one scale, the mean variance of what the crops bring it (layer after
    layer, in eval mode), and no centring: per-channel statistics from a few crops would amplify
    near-constant channels and centring makes a random network chaotic, both until the 8-bit
    rounding of a PIL resize moves the logits by whole units. The last layer is random except
    that class ``i`` points at the centred pooled features of crop ``i``: a nearest-prototype
    head with top-1 margins far above that rounding, so an agreement test fails only for a real
    difference."""
    torch.manual_seed(seed)
    network.eval()

    def calibrate(module, args):
        x = args[0]
        module.running_mean.zero_()
        module.running_var.fill_(float(x.var((0, 2, 3)).mean()))

    hooks = [m.register_forward_pre_hook(calibrate) for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            network(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        features = pooled(network, inputs)
        centre = features.mean(0)
        prototypes = features - centre
        weight = torch.randn_like(last_linear.weight) * 0.5 * last_linear.in_features ** -0.5
        weight[: len(inputs)] = 2.0 * prototypes / prototypes.norm(dim=1, keepdim=True)
        last_linear.weight.copy_(weight)
        last_linear.bias.copy_(-weight @ centre)
    return {key: value.clone() for key, value in network.state_dict().items()}


def mobilenet_pooled(network, x):
    return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(network.features(x), 1), 1)


def lite_pooled(network, x):
    return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(network.extract_features(x), 1), 1)


def torchvision_transform():
    return torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()


@pytest.fixture(scope="module")
def test_weights(tmp_path_factory, images):
    """Random files of both models and damaged ones, registered as ``test-classification-*`` and
    imported into a weights cache of their own (tests that use it point $ULBC_WEIGHTS there)."""
    from efficientnet_lite_pytorch import EfficientNet

    folder = tmp_path_factory.mktemp("classifiers")
    crops = as_batch([images[name] for name in PROTOTYPES])
    resized = ImageClassification(crop_size=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(crops)
    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v2(weights=None)
    states = {"mobilenet_v2": random_state(mobilenet, torchvision_transform()(crops), mobilenet.classifier[1],
                                             mobilenet_pooled, seed=0)}
    torch.manual_seed(1)
    lite = EfficientNet.from_name("efficientnet-lite0")
    lite_input = (resized * 255 - 127) / 128
    states["efficientnet_lite0"] = random_state(lite, lite_input, lite._fc, lite_pooled, seed=1)
    missing = dict(states["mobilenet_v2"])
    del missing["features.5.conv.1.0.weight"]
    misshapen = dict(states["mobilenet_v2"])
    misshapen["classifier.1.weight"] = torch.zeros(10, 1280)
    contents = {**states, "missing": missing, "misshapen": misshapen}
    files = {key: folder / f"{key}.pth" for key in (*contents, "garbage")}
    for key, state in contents.items():
        torch.save(state, files[key])
    files["garbage"].write_bytes(b"not a torch file\n" * 8)

    cache, names = folder / "cache", {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ULBC_WEIGHTS", str(cache))
        patch.setenv("TORCH_HOME", str(folder / "torch"))
        patch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
        try:
            for key, path in files.items():
                name = f"test-classification-{key}"
                weights.register_weights(WeightFile(
                    name=name, file_name=f"{name}.pth", urls=(), sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                    size=None, licence="test", used_by=("classification",), description="random test classifier"))
                names[key] = name
                weights.import_file(path, name)
        except BaseException:
            for name in names.values():
                weights.unregister_weights(name)
            raise
    yield types.SimpleNamespace(states=states, names=names, files=files, cache=cache, torch_home=folder / "torch")
    for name in names.values():
        weights.unregister_weights(name)


@pytest.fixture
def cached(monkeypatch, test_weights):
    """This test sees the test weights' cache (and no site registry)."""
    monkeypatch.setenv("ULBC_WEIGHTS", str(test_weights.cache))
    monkeypatch.setenv("TORCH_HOME", str(test_weights.torch_home))
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
    return test_weights


# -- agreement against torchvision ---------------------------------------------------------------------
def by_hand(reference_logits: torch.Tensor, reconstruction_logits: torch.Tensor) -> dict[str, float]:
    log_p = torch.log_softmax(reference_logits.double(), 0)
    log_q = torch.log_softmax(reconstruction_logits.double(), 0)
    target = int(log_p.argmax())
    return {"top1_agreement": float(int(log_q.argmax()) == target),
            "top5_agreement": float(target in log_q.topk(5).indices.tolist()),
            "logit_kl": float((log_p.exp() * (log_p - log_q)).sum())}


PAIRS = [("astronaut", "astronaut"), ("astronaut", "astronaut_light_noise"), ("astronaut", "astronaut_heavy_noise"),
         ("astronaut", "coffee"), ("cat", "rocket")]


def test_agreement_and_kl_equal_torchvision_on_pil_images(cached, images):
    """torchvision's own MobileNetV2 and its IMAGENET1K_V1 transform on PIL images, the metric
    values computed here by hand. PIL rounds the resized image to 8 bits where ulbc resizes the
    float tensor, so the logits differ by that rounding: KL agrees to 5 % where the predictions
    differ and to 0.02 nats where they nearly coincide."""
    network = torchvision.models.mobilenet_v2(weights=None)
    network.load_state_dict(cached.states["mobilenet_v2"])
    network.eval()
    transform = torchvision_transform()
    metric = METRICS["classification"](weights=cached.names["mobilenet_v2"])
    seen = []
    for reference, reconstruction in PAIRS:
        batch = torch.stack([transform(Image.fromarray(images[reference])),
                             transform(Image.fromarray(images[reconstruction]))])
        with torch.no_grad():
            logits = network(batch)
        expected = by_hand(logits[0], logits[1])
        values = compute_metrics([metric], images[reference], images[reconstruction])
        assert values["top1_agreement"] == expected["top1_agreement"], (reference, reconstruction)
        assert values["top5_agreement"] == expected["top5_agreement"], (reference, reconstruction)
        if expected["logit_kl"] > 0.1:
            assert values["logit_kl"] == pytest.approx(expected["logit_kl"], rel=0.05)
        else:  # the same prediction: the 8-bit rounding of PIL's resize is most of what is left
            assert values["logit_kl"] == pytest.approx(expected["logit_kl"], abs=0.02)
        seen.append((reference, reconstruction, expected))
    assert seen[0][2]["logit_kl"] == pytest.approx(0.0, abs=1e-9)
    top1 = {pair[:2]: pair[2]["top1_agreement"] for pair in seen}
    # Both outcomes are exercised: an agreeing pair and pairs whose top-1 differs (top-5 too, for one).
    assert top1[("astronaut", "astronaut_light_noise")] == 1.0
    assert top1[("astronaut", "coffee")] == 0.0 and top1[("cat", "rocket")] == 0.0
    assert min(pair[2]["top5_agreement"] for pair in seen) == 0.0
    assert seen[3][2]["logit_kl"] > 0.1


def test_metric_equals_torchvision_on_float_tensors_exactly(cached, images):
    """On the float tensor path the transform and the network are torchvision's own arithmetic."""
    network = torchvision.models.mobilenet_v2(weights=None)
    network.load_state_dict(cached.states["mobilenet_v2"])
    network.eval()
    metric = METRICS["classification"](weights=cached.names["mobilenet_v2"])
    for reference, reconstruction in [("astronaut", "astronaut_heavy_noise"), ("cat", "rocket")]:
        pair = as_batch([images[reference], images[reconstruction]])
        with torch.no_grad():
            logits = network(torchvision_transform()(pair))
        np.testing.assert_allclose(metric.logits(images[reference], images[reconstruction]).numpy(), logits.numpy(),
                                   rtol=1e-5, atol=1e-5)
        expected = by_hand(logits[0], logits[1])
        values = metric.compute(images[reference], images[reconstruction])
        assert values["top1_agreement"] == expected["top1_agreement"]
        assert values["top5_agreement"] == expected["top5_agreement"]
        assert values["logit_kl"] == pytest.approx(expected["logit_kl"], rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("size", [(96, 128), (257, 190), (224, 224)])
def test_preprocess_is_the_torchvision_transform(cached, size):
    classifier = load_classifier("mobilenet_v2", cached.names["mobilenet_v2"])
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    ours = classifier.preprocess(x)
    assert ours.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours, torchvision_transform()(x), rtol=0, atol=1e-6)


def test_reference_and_reconstruction_go_through_in_one_batch(cached, images):
    metric = METRICS["classification"](weights=cached.names["mobilenet_v2"])
    batches = []
    handle = metric.classifier().network.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape))
    try:
        metric.compute(images["astronaut"], images["coffee"])
    finally:
        handle.remove()
    assert batches == [torch.Size([2, 3, 224, 224])]


# -- EfficientNet-Lite0 against efficientnet_lite_pytorch ------------------------------------------------
def test_efficientnet_lite0_equals_the_reference_package(cached, images):
    from efficientnet_lite_pytorch import EfficientNet

    from ulbc.tasknets.efficientnet_lite import EfficientNetLite0

    state = cached.states["efficientnet_lite0"]
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(state, strict=True)
    reference.eval()
    ours = EfficientNetLite0()
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert len(ours.state_dict()) == 296

    classifier = load_classifier("efficientnet_lite0", cached.names["efficientnet_lite0"])
    x = as_batch([images["astronaut"], images["coffee"], images["cat"]])
    with torch.no_grad():
        normalised = classifier.preprocess(x)
        expected = reference(normalised)
        logits = classifier(x)
        pooled = classifier.features(x)
        expected_pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(reference.extract_features(normalised),
                                                                                1), 1)
    assert expected.std() > 0.1 and int(expected[0].argmax()) != int(expected[1].argmax())
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-5)
    # TensorFlow Lite's normalisation: (v - 127) / 128 on 0..255.
    torch.testing.assert_close(normalised, (classifier_resized(classifier, x) * 255 - 127) / 128, rtol=0, atol=1e-5)


def classifier_resized(classifier: ImageNetClassifier, x: torch.Tensor) -> torch.Tensor:
    """The resized and cropped [0, 1] image, before normalisation."""
    return classifier.preprocess(x) * classifier.std + classifier.mean


def test_efficientnet_lite0_metric_runs_on_its_weights(cached, images):
    metric = METRICS["classification"](model="efficientnet_lite0", weights=cached.names["efficientnet_lite0"])
    assert metric.weight_names() == (cached.names["efficientnet_lite0"],)
    same = metric.compute(images["cat"], images["cat"].copy())
    assert same == {"top1_agreement": 1.0, "top5_agreement": 1.0, "logit_kl": pytest.approx(0.0, abs=1e-9)}
    assert metric.compute(images["cat"], images["coffee"])["logit_kl"] > 0.01


# -- bad weights -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, problem", [
    ("missing", r"missing features\.5\.conv\.1\.0\.weight"),
    ("misshapen", r"classifier\.1\.weight is 10x1280, expected 1000x1280"),
    ("garbage", r"not a torch\.save file|expected a mapping|not a torchvision"),
])
def test_a_wrong_state_dict_is_one_line_naming_the_file(cached, images, key, problem):
    path = str(cached.cache / f"{cached.names[key]}.pth")
    with pytest.raises(InputError, match=problem) as caught:
        load_classifier("mobilenet_v2", cached.names[key])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(path) and "mobilenet_v2 state dict" in message
    metric = METRICS["classification"](weights=cached.names[key])
    with pytest.raises(InputError, match=problem):
        metric.compute(images["astronaut"], images["coffee"])


def test_one_models_file_is_refused_by_the_other(cached):
    with pytest.raises(InputError, match=r"not an EfficientNet-Lite0 state dict in efficientnet_pytorch's layout "
                                         r"\(missing _conv_stem\.weight"):
        load_classifier("efficientnet_lite0", cached.names["mobilenet_v2"])
    with pytest.raises(InputError, match="not a torchvision mobilenet_v2 state dict"):
        load_classifier("mobilenet_v2", cached.names["efficientnet_lite0"])


def test_unknown_names_are_config_errors(cached):
    with pytest.raises(ConfigError, match="unknown classifier 'resnet'"):
        load_classifier("resnet")
    with pytest.raises(ConfigError, match="unknown weights 'nope'"):
        load_classifier("mobilenet_v2", "nope")
    with pytest.raises(ConfigError, match="unknown weights 'nope'"):
        METRICS["classification"](weights="nope")
    with pytest.raises(ConfigError, match="option model must be one of"):
        build_metrics(["classification"], {"classification": {"model": "resnet"}})


# -- the classifier as a differentiable module -------------------------------------------------------------
@pytest.mark.parametrize("model", list(MODELS))
def test_gradients_reach_the_input_and_nothing_else(cached, model):
    classifier = load_classifier(model, cached.names[model])
    x = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(3), requires_grad=True)
    logits = classifier(x)
    assert logits.shape == (1, 1000)
    torch.log_softmax(logits, 1)[0, 7].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in classifier.parameters())
    # A parent switched to training must not put BatchNorm on batch statistics.
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    parent = torch.nn.Sequential(classifier).train()
    assert not classifier.training and not any(m.training for m in classifier.modules())
    with torch.no_grad():
        again = parent(x)
    torch.testing.assert_close(again, logits.detach(), rtol=0, atol=0)
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    features = classifier.features(x)
    assert features.shape == (1, 1280)


def test_features_feed_the_last_layer(cached, images):
    classifier = load_classifier("mobilenet_v2", cached.names["mobilenet_v2"])
    x = as_batch([images["astronaut"]])
    with torch.no_grad():
        torch.testing.assert_close(classifier.network.classifier(classifier.features(x)), classifier(x))


def test_preprocess_refuses_what_is_no_image_batch(cached):
    classifier = load_classifier("mobilenet_v2", cached.names["mobilenet_v2"])
    with pytest.raises(InputError, match=r"expected a float tensor \(N, 3, H, W\)"):
        classifier(torch.zeros(3, 32, 32))
    with pytest.raises(InputError, match="torch.uint8"):
        classifier(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# -- registry and provenance -----------------------------------------------------------------------------
def test_metric_names_and_records_what_it_loads(cached):
    assert METRICS["classification"]().weight_names() == ("torchvision-mobilenet_v2",)
    assert METRICS["classification"](model="efficientnet_lite0").weight_names() == ("efficientnet-lite0",)
    assert {name: spec.weights for name, spec in CLASSIFIERS.items()} == MODELS
    metric = METRICS["classification"](weights=cached.names["mobilenet_v2"])
    info = metric.info()
    assert info["options"] == {"model": "mobilenet_v2", "weights": cached.names["mobilenet_v2"]}
    assert info["weights"] == {cached.names["mobilenet_v2"]:
                               hashlib.sha256(cached.files["mobilenet_v2"].read_bytes()).hexdigest()}
    assert info["torchvision"] == torchvision.__version__
    assert info["device"] == "cpu"
    assert info["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_metrics_command_lists_classification(capsys):
    import json

    from ulbc.cli import main

    main(["metrics", "--json"])
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    entry = listed["classification"]
    assert entry["level"] == "item" and entry["gpu"] is True
    assert entry["weights"] == ["torchvision-mobilenet_v2"]
    assert {c["name"]: (c["better"], c["rd"]) for c in entry["columns"]} == {
        "top1_agreement": ("higher", True), "top5_agreement": ("higher", True), "logit_kl": ("lower", True)}
    assert set(entry["option_specs"]) == {"model", "weights"}


# -- the real weights, where this machine has them ------------------------------------------------------
@pytest.mark.parametrize("model", list(MODELS))
def test_real_weights_recognise_photos(model):
    if not weights.verify(MODELS[model]).ok:
        pytest.skip(f"weights {MODELS[model]} not on this machine (ulbc weights fetch {MODELS[model]})")
    classifier = load_classifier(model)
    categories = imagenet_categories()
    x = as_batch([load_rgb(skimage_photo("coffee.png"))])
    cat = as_batch([load_rgb(skimage_photo("chelsea.png"))])
    with torch.no_grad():
        assert categories[int(classifier(x).argmax())] == "espresso"
        assert categories[int(classifier(cat).argmax())] in {"tabby", "tiger cat", "Egyptian cat"}
