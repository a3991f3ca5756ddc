"""torchvision detection models built offline have exactly the structure of torchvision's own
construction with the published weights, so the published files load without a key mismatch."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from ulbc.errors import ConfigError, InputError
from ulbc.tasknets import detectors


def _torchvision_trained_build(architecture: str):
    """torchvision's network as it builds it for the DEFAULT (published) weights, with the download
    and the loading of the file taken out."""
    import torchvision
    from torchvision.models._api import WeightsEnum

    with mock.patch.object(WeightsEnum, "get_state_dict", return_value={}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", return_value=None):
        return torchvision.models.get_model(architecture, weights="DEFAULT")


def _layout(model) -> dict[str, tuple]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("architecture", ["maskrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                                          "maskrcnn_resnet50_fpn_v2", "ssdlite320_mobilenet_v3_large"])
def test_the_offline_build_has_the_published_layout(architecture):
    ours = detectors.build_detector(architecture)
    theirs = _torchvision_trained_build(architecture)
    assert _layout(ours) == _layout(theirs)
    assert [type(m).__name__ for m in ours.modules()] == [type(m).__name__ for m in theirs.modules()]


def test_every_registered_architecture_is_a_torchvision_model():
    import torchvision

    assert set(detectors.architectures()) <= set(torchvision.models.list_models(torchvision.models.detection))


def test_loading_checks_keys_and_shapes(tmp_path):
    model = detectors.build_detector("fasterrcnn_mobilenet_v3_large_320_fpn")
    state = model.state_dict()
    good = tmp_path / "good.pth"
    torch.save(state, good)
    detectors.load_state(detectors.build_detector("fasterrcnn_mobilenet_v3_large_320_fpn"), good, "x")
    broken = dict(state)
    key = next(iter(broken))
    del broken[key]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(InputError, match=rf"^.*missing.pth: not x \(missing {key}\)$"):
        detectors.load_state(model, tmp_path / "missing.pth", "x")
    reshaped = dict(state, **{key: torch.zeros(3)})
    torch.save(reshaped, tmp_path / "shape.pth")
    with pytest.raises(InputError, match=r"shape.pth: not x \(.* is 3, expected .*\)$"):
        detectors.load_state(model, tmp_path / "shape.pth", "x")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"junk.pth: not x \("):
        detectors.load_state(model, tmp_path / "junk.pth", "x")


def test_unknown_architecture_and_settings_are_config_errors():
    with pytest.raises(ConfigError, match="unknown detection architecture 'yolo'"):
        detectors.build_detector("yolo")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['colour'\]"):
        detectors.build_detector("maskrcnn_resnet50_fpn", colour=1)
