"""FID and KID: the patch protocol, the statistics against torchmetrics, the Inception through the weights manager."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from ulbc import weights
from ulbc.errors import InputError
from ulbc.metrics import METRICS, build_metrics
from ulbc.metrics.base import MetricUndefined, check_values
from ulbc.metrics.fid import FEATURE_DIM, load_inception, patch_count, patch_grid
from ulbc.weights import WeightFile, WeightsMissingError


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- the patch protocol ---------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, size, regular, shifted", [
    (512, 768, 256, 6, 2),    # HiFiC's example: 3x2 grid, then 2x1 on the image cropped by 128
    (64, 64, 32, 4, 1),
    (100, 70, 32, 6, 2),      # odd sizes: partial patches dropped on both grids
    (47, 47, 32, 1, 0),       # 47 < 1.5 * 32: no shifted grid
    (48, 48, 32, 1, 1),       # exactly 1.5 patches: the shifted grid is taken
    (25, 40, 17, 2, 0),       # odd P: 25 - 8 >= 17 but 25 < 25.5, so NeuralCompression skips it
    (31, 500, 32, 0, 0),      # shorter than one patch
    (20, 20, 256, 0, 0),
])
def test_patch_counts_follow_the_two_grid_protocol(height, width, size, regular, shifted):
    patches = patch_grid(image(height, width), size)
    assert patches.shape == (regular + shifted, 3, size, size)
    assert patches.dtype == np.uint8 and patches.flags.c_contiguous
    assert patch_count(height, width, size) == regular + shifted


def test_patches_are_the_right_pixels():
    img = image(100, 70, seed=3)
    patches = patch_grid(img, 32)
    # Regular grid, row-major: patch (row 1, col 0), then the shifted grid starts at index 6.
    assert np.array_equal(patches[2], img[32:64, 0:32].transpose(2, 0, 1))
    assert np.array_equal(patches[1], img[0:32, 32:64].transpose(2, 0, 1))
    assert np.array_equal(patches[6], img[16:48, 16:48].transpose(2, 0, 1))
    assert np.array_equal(patches[7], img[48:80, 16:48].transpose(2, 0, 1))


def test_patch_grid_refuses_what_is_not_rgb8():
    with pytest.raises(InputError, match="uint8 RGB"):
        patch_grid(image(64, 64).astype(np.float32), 32)
    with pytest.raises(InputError, match="uint8 RGB"):
        patch_grid(image(64, 64)[..., 0], 32)


# -- statistics against torchmetrics ---------------------------------------------------------------------
class PassThrough(torch.nn.Module):
    """A torchmetrics feature extractor that hands the given features on unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def random_features(count: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 0.5, (count, dim)) + shift).astype(np.float32)


@pytest.mark.parametrize("dim", [64, 2048])
def test_fid_equals_torchmetrics(dim):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = random_features(300, dim, 1), random_features(300, dim, 2, shift=0.1)
    ours = METRICS["fid"](min_patches=2).from_features({"real": real, "fake": fake})
    reference = FrechetInceptionDistance(feature=PassThrough(dim))
    reference.update(torch.from_numpy(real.astype(np.float64)), real=True)
    reference.update(torch.from_numpy(fake.astype(np.float64)), real=False)
    expected = float(reference.compute())
    assert ours["fid_patches"] == 300
    assert ours["fid"] > 0
    assert ours["fid"] == pytest.approx(expected, rel=1e-6)
    # Identical sets are at distance ~0.
    same = METRICS["fid"](min_patches=2).from_features({"real": real, "fake": real.copy()})
    assert abs(same["fid"]) < 1e-6 * ours["fid"]


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_equals_torchmetrics_on_the_same_subsets():
    from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

    dim, count, subset_size, subsets, seed = 64, 300, 120, 7, 11
    real, fake = random_features(count, dim, 3), random_features(count, dim, 4, shift=0.05)
    kid = METRICS["kid"](subset_size=subset_size, subsets=subsets, seed=seed)
    ours = check_values(kid, kid.from_features({"real": real, "fake": fake}), kid.columns)

    # The subsets ulbc promises: NumPy RandomState(seed), real then fake, without replacement.
    rng = np.random.RandomState(seed)
    r64, f64 = torch.from_numpy(real.astype(np.float64)), torch.from_numpy(fake.astype(np.float64))
    values = []
    for _ in range(subsets):
        pick_real = torch.from_numpy(rng.choice(count, subset_size, replace=False))
        pick_fake = torch.from_numpy(rng.choice(count, subset_size, replace=False))
        values.append(float(poly_mmd(r64[pick_real], f64[pick_fake])))
    assert ours["kid"] == pytest.approx(np.mean(values), rel=1e-9)
    assert ours["kid_std"] == pytest.approx(np.std(values), rel=1e-9)
    assert ours["kid_patches"] == count
    # Deterministic: the same features give the same value; another seed other subsets.
    assert kid.from_features({"real": real, "fake": fake}) == ours
    other = METRICS["kid"](subset_size=subset_size, subsets=subsets, seed=seed + 1)
    assert other.from_features({"real": real, "fake": fake})["kid"] != ours["kid"]

    # One subset of every patch: the draw is a permutation, so torchmetrics' own class agrees.
    whole = METRICS["kid"](subset_size=count, subsets=1).from_features({"real": real, "fake": fake})
    reference = KernelInceptionDistance(feature=PassThrough(dim), subset_size=count, subsets=1)
    reference.update(r64, real=True)
    reference.update(f64, real=False)
    mean, _ = reference.compute()
    assert whole["kid"] == pytest.approx(float(mean), rel=1e-9)


def test_too_few_patches_is_undefined_not_an_estimate():
    real, fake = random_features(40, 64, 5), random_features(40, 64, 6)
    with pytest.raises(MetricUndefined, match=r"FID from 40 patches: at least 2048 needed \(option min_patches\)"):
        METRICS["fid"]().from_features({"real": real, "fake": fake})
    with pytest.raises(MetricUndefined, match=r"KID from 40 patches: at least 1000 needed \(option subset_size\)"):
        METRICS["kid"]().from_features({"real": real, "fake": fake})
    empty = np.zeros((0, 0), np.float32)  # what a rate point without any patch reads back
    with pytest.raises(MetricUndefined, match="FID from 0 patches"):
        METRICS["fid"](min_patches=2).from_features({"real": empty, "fake": empty})
    with pytest.raises(InputError, match="40 real but 39 fake"):
        METRICS["fid"](min_patches=2).from_features({"real": real, "fake": fake[:39]})


def test_options_and_shared_features_key():
    fid, kid = build_metrics(["fid", "kid"], {"fid": {"patch_size": 64}, "kid": {"patch_size": 64}})
    assert fid.level == kid.level == "dataset"
    assert fid.features_key() == kid.features_key()
    other = METRICS["kid"](patch_size=128)
    assert other.features_key() != fid.features_key()
    assert fid.weight_names() == ("inception-v3-fid",)
    assert {c.name: c.rd for c in fid.columns} == {"fid": True, "fid_patches": False}
    assert {c.name: c.dtype for c in kid.columns} == {"kid": "float64", "kid_std": "float64", "kid_patches": "int64"}
    from ulbc.errors import ConfigError

    with pytest.raises(ConfigError, match="option patch_size must be an integer"):
        METRICS["fid"](patch_size=8)
    with pytest.raises(ConfigError, match="unknown weights 'nope'"):
        METRICS["fid"](weights="nope")


# -- the Inception network through the weights manager ---------------------------------------------------
@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A randomly initialised InceptionV3 in torch-fidelity's layout, saved to a file."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    class Unloaded(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *args, **kwargs: {}  # nothing is downloaded
    try:
        torch.manual_seed(0)
        network = Unloaded("inception-v3-compat", ["2048"])
    finally:
        tfi.load_state_dict_from_url = original
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture
def registered(monkeypatch, tmp_path):
    """Registers files as weights entries in an isolated cache; unregisters them afterwards."""
    monkeypatch.setenv("ULBC_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
    names: list[str] = []

    def register(name: str, path, *, imported: bool = True) -> str:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        weights.register_weights(WeightFile(name=name, file_name=f"{name}.pth", urls=(), sha256=digest, size=None,
                                            licence="test", used_by=("fid", "kid"), description="test weights"))
        names.append(name)
        if imported:
            weights.import_file(path, name)
        return name

    yield register
    for name in names:
        weights.unregister_weights(name)


def test_features_run_the_registered_inception(random_inception, registered):
    name = registered("test-fid-random-inception", random_inception)
    fid = METRICS["fid"](patch_size=32, batch_size=6, weights=name)
    kid = METRICS["kid"](patch_size=32, weights=name, subset_size=2, subsets=3)
    assert fid.features_key() == kid.features_key()
    items = [(image(96, 64, seed), image(96, 64, seed + 10)) for seed in (1, 2)]
    parts = [fid.features(ref, rec) for ref, rec in items]
    for part in parts:
        assert set(part) == {"real", "fake"}
        assert part["real"].shape == part["fake"].shape == (8, FEATURE_DIM)  # 3x2 + 2x1 patches
        assert part["real"].dtype == np.float32 and np.isfinite(part["real"]).all()
        assert not np.array_equal(part["real"], part["fake"])
    # Batching does not change the features: the same item in one batch gives the same values.
    whole = METRICS["fid"](patch_size=32, batch_size=64, weights=name).features(*items[0])
    np.testing.assert_allclose(whole["real"], parts[0]["real"], rtol=1e-4, atol=1e-5)
    # A reconstruction equal to its reference has the same features.
    same = fid.features(items[0][0], items[0][0].copy())
    np.testing.assert_array_equal(same["real"], same["fake"])
    # Too small for one patch: no features, no network needed.
    tiny = fid.features(image(20, 20), image(20, 20))
    assert tiny["real"].shape == (0, FEATURE_DIM)

    joined = {side: np.concatenate([p[side] for p in parts]) for side in ("real", "fake")}
    values = kid.from_features(joined)
    assert values["kid_patches"] == 16 and math.isfinite(values["kid"])
    with pytest.raises(MetricUndefined, match="FID from 16 patches: at least 2048 needed"):
        fid.from_features(joined)
    info = fid.info()
    assert info["weights"] == {name: hashlib.sha256(random_inception.read_bytes()).hexdigest()}
    assert info["options"]["patch_size"] == 32 and "torch_fidelity" in info


def test_missing_weights_give_the_managers_one_line_error(registered, tmp_path):
    absent = tmp_path / "never-imported.pth"
    absent.write_bytes(b"not imported")
    name = registered("test-fid-absent", absent, imported=False)
    fid = METRICS["fid"](patch_size=32, weights=name)
    with pytest.raises(WeightsMissingError) as err:
        fid.features(image(64, 64), image(64, 64))
    message = str(err.value)
    assert "\n" not in message and f"{name}.pth" in message and f"ulbc weights fetch {name}" in message


def test_a_wrong_weights_file_is_refused_in_one_line(registered, tmp_path):
    not_torch = tmp_path / "noise.bin"
    not_torch.write_bytes(np.random.default_rng(0).bytes(4096))
    wrong_layout = tmp_path / "other-net.pth"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, wrong_layout)
    for label, path in (("test-fid-noise", not_torch), ("test-fid-wrong-layout", wrong_layout)):
        name = registered(label, path)
        with pytest.raises(InputError) as err:
            METRICS["fid"](patch_size=32, weights=name).features(image(64, 64), image(64, 64))
        message = str(err.value)
        assert "\n" not in message and f"{name}.pth" in message and "InceptionV3" in message
        assert "weights_only" not in message
    with pytest.raises(InputError, match="not torch-fidelity's InceptionV3 layout"):
        load_inception(wrong_layout)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inception_features_on_cuda_match_the_cpu(random_inception, registered):
    """Within a stated tolerance (float32 convolutions differ in summation order): 1e-3 relative
    on the features, 1e-3 relative on the FID computed from them."""
    name = registered("test-fid-cuda-inception", random_inception)
    items = [(image(96, 64, seed), image(96, 64, seed + 10)) for seed in (1, 2, 3)]
    on = {device: METRICS["fid"](patch_size=32, weights=name, min_patches=2, device=device)
          for device in ("cpu", "cuda")}
    assert on["cuda"].info()["device"] == "cuda"
    features = {device: [metric.features(*item) for item in items] for device, metric in on.items()}
    for cpu, gpu in zip(features["cpu"], features["cuda"]):
        np.testing.assert_allclose(gpu["real"], cpu["real"], rtol=1e-3, atol=1e-4)
    joined = {device: {side: np.concatenate([p[side] for p in parts]) for side in ("real", "fake")}
              for device, parts in features.items()}
    assert on["cuda"].from_features(joined["cuda"])["fid"] == pytest.approx(
        on["cpu"].from_features(joined["cpu"])["fid"], rel=1e-3)
