"""The machine-task term of the overfitted codecs' loss: its distance, and that a task-aware encode
is an ordinary file every decoder reads. Random MobileNetV2 weights in torchvision's layout stand
in for the ImageNet ones (the real file is checked in tests/test_weights_wheel.py)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torchvision

from test_weights import isolate_weights
from ulbc import weights
from ulbc.codecs import decode_bitstream, get_codec
from ulbc.codecs.overfitted import TASK_CLASSIFIER_WEIGHTS, TASK_CLASSIFIERS
from ulbc.overfit.taskterm import TaskSpec, TaskTerm
from ulbc.tasknets.classifiers import CLASSIFIERS, load_classifier
from ulbc.weights import WeightFile

TEST_WEIGHTS = "test-taskterm-mobilenet_v2"


@pytest.fixture(scope="module")
def random_mobilenet(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("taskterm") / "mobilenet_v2-random.pth"
    network = torchvision.models.mobilenet_v2()
    # BatchNorm statistics of what random images bring each layer: with the untrained ones (0, 1)
    # the activations of a random network die out and every image gets the same logits.
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batches below
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.randn(4, 3, 96, 96))
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture
def classifier_weights(random_mobilenet, monkeypatch, tmp_path):
    isolate_weights(monkeypatch, tmp_path / "w", tmp_path / "torch")
    data = random_mobilenet.read_bytes()
    weights.register_weights(WeightFile(
        name=TEST_WEIGHTS, file_name=random_mobilenet.name, urls=(), sha256=hashlib.sha256(data).hexdigest(),
        size=len(data), licence="test", used_by=("test",), description="random MobileNetV2"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / random_mobilenet.name).write_bytes(data)
    yield hashlib.sha256(data).hexdigest()
    weights.unregister_weights(TEST_WEIGHTS)


def test_the_codecs_torch_free_tables_are_the_classifiers():
    assert TASK_CLASSIFIERS == tuple(CLASSIFIERS)
    assert TASK_CLASSIFIER_WEIGHTS == {name: spec.weights for name, spec in CLASSIFIERS.items()}


def test_kl_and_feature_distances(classifier_weights):
    classifier = load_classifier("mobilenet_v2", TEST_WEIGHTS)
    generator = torch.Generator().manual_seed(0)
    originals = torch.rand(2, 40, 48, 3, generator=generator)
    decoded = (originals + 0.2 * torch.randn(2, 40, 48, 3, generator=generator)).clamp(0, 1).requires_grad_(True)
    term = TaskTerm(classifier, "kl", 0.5)
    reference = term.reference(originals)
    value = term(decoded, reference)
    p = torch.log_softmax(classifier(originals.permute(0, 3, 1, 2)), dim=1)
    q = torch.log_softmax(classifier(decoded.detach().permute(0, 3, 1, 2)), dim=1)
    direct = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(dim=1)
    torch.testing.assert_close(value.detach(), 0.5 * direct, rtol=1e-5, atol=1e-7)
    value.sum().backward()
    assert decoded.grad is not None and decoded.grad.abs().sum() > 0  # the term reaches the pixels
    assert torch.allclose(term(originals, reference), torch.zeros(2), atol=1e-6)
    features = TaskTerm(classifier, "features", 1.0)
    same = features(originals, features.reference(originals))
    assert torch.allclose(same, torch.zeros(2), atol=1e-9)
    assert bool((features(decoded.detach(), features.reference(originals)) > 0).all())
    with pytest.raises(ValueError, match="task distance"):
        TaskSpec("mobilenet_v2", "", "l1", 1.0)


def test_a_task_aware_encode_is_an_ordinary_coolchic_file(classifier_weights):
    rng = np.random.default_rng(5)
    image = np.clip(rng.normal(128, 40, (24, 32, 3)), 0, 255).astype(np.uint8)
    common = dict(iterations=12, candidates=1, warmup_iterations=0, final_iterations=2, progress=False)
    aware = get_codec("coolchic", task_model="mobilenet_v2", task_weights=TEST_WEIGHTS, task_lambda=1e-2, **common)
    assert aware.weight_names(1e-3) == [TEST_WEIGHTS]
    assert get_codec("coolchic", **common).weight_names(1e-3) == []
    assert get_codec("coolchic", task_model="mobilenet_v2").weight_names(1e-3) == ["torchvision-mobilenet_v2"]
    result = aware.encode_result(image, 1e-3, seed=1)  # verify=True: the compiled decoder agrees with it
    info = result.info if isinstance(result.info, dict) else json.loads(result.info)
    task = info["task"]
    assert task["model"] == "mobilenet_v2" and task["distance"] == "kl" and task["lambda_m"] == 1e-2
    assert task["weights_sha256"] == classifier_weights and np.isfinite(task["float_distance"])
    codec, decoded = decode_bitstream(result.data)
    assert codec.name == "coolchic" and decoded.shape == image.shape
    plain = get_codec("coolchic", **common).encode(image, 1e-3, seed=1)
    assert plain != result.data  # the term changed the optimisation, not the format
    _, plain_decoded = decode_bitstream(plain)
    assert plain_decoded.shape == image.shape
