"""`ulbc train glc` (GLC stages II and III) on the tiny random configuration, offline on the CPU:
random 64x64 images, a random VQ-VAE and, for stage III, a random-initialised LPIPS backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulbc import cli

from test_weights import isolate_weights

torch = pytest.importorskip("torch")

from ulbc.glc import train  # noqa: E402 - after the skip
from ulbc.glc.config import get_config  # noqa: E402
from ulbc.glc.model import GLCImage, load_weights, read_checkpoint  # noqa: E402

CONFIG = "glc-tiny"
CFG = get_config(CONFIG)


def write_images(folder: Path, count: int = 3, seed: int = 0) -> Path:
    """Smooth random images (noise is not what a VQ-VAE codes), one in a subfolder, one JPEG, one wider."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        width = 80 if index == 1 else 64
        coarse = rng.integers(0, 256, (8, 10 if index == 1 else 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, 64), Image.BILINEAR)
        if index == 2:
            image.save(folder / "sub" / f"{index}.jpg", quality=95)
        else:
            image.save(folder / f"{index}.png")
    return folder


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images")


@pytest.fixture
def one_image(tmp_path):
    folder = write_images(tmp_path / "one", count=1)
    return folder


@pytest.fixture
def init_file(tmp_path) -> Path:
    """A random GLC checkpoint in the release layout, standing in for a trained VQ-VAE."""
    torch.manual_seed(11)
    path = tmp_path / "init.pth"
    torch.save({"net_g": GLCImage(CFG, code_prediction=True).state_dict()}, path)
    return path


def run_train(stage: int, images: Path, out: Path, *extra: str, steps: int = 4, batch: int = 2) -> int:
    return cli.main(["train", "glc", "--stage", str(stage), "--config", CONFIG, "--images", str(images),
                     "--out", str(out), "--steps", str(steps), "--batch-size", str(batch), "--crop", "64",
                     "--lr", "1e-3", "--device", "cpu", "--seed", "3", "--quiet", *extra])


def stage3_options(*extra: str) -> tuple[str, ...]:
    return ("--lpips-weights", "random", "--disc-width", "8", *extra)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def net_g(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["net_g"]


def test_stage2_lowers_the_loss_and_leaves_the_vq_vae_as_it_was(tmp_path, one_image, init_file):
    out = tmp_path / "s2.ckpt"
    steps = 24
    assert run_train(2, one_image, out, "--init", str(init_file), "--no-flip", "--lr", "3e-3", steps=steps,
                     batch=1) == 0
    log = read_log(out.with_name(out.name + ".jsonl"))
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    assert [r["rate"] for r in log] == [s % CFG.n_rates for s in range(steps)]
    assert {"loss", "bpp", "latent_mse", "code_ce", "z_loss", "seconds"} <= log[0].keys()
    # One fixed image: each rate's loss falls from its first step to its last.
    for rate in range(CFG.n_rates):
        losses = [r["loss"] for r in log if r["rate"] == rate]
        assert losses[-1] < losses[0], (rate, losses)
    assert np.mean([r["loss"] for r in log[-4:]]) < 0.8 * np.mean([r["loss"] for r in log[:4]])
    assert np.mean([r["latent_mse"] for r in log[-4:]]) < np.mean([r["latent_mse"] for r in log[:4]])

    before, after = net_g(init_file), net_g(out)
    assert before.keys() == after.keys()
    frozen = [k for k in before if k.startswith(("vqgan.", "code_pred_pix_loss."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    for trained in ("enc.", "dec.", "hyper_enc.", "hyper_dec.", "y_prior_fusion.", "y_spatial_prior.", "q_enc",
                    "q_dec", "z_vq.", "code_pred_loss."):
        keys = [k for k in before if k.startswith(trained)]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), trained


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tmp_path, images):
    whole, split = tmp_path / "whole.ckpt", tmp_path / "split.ckpt"
    assert run_train(2, images, whole, "--init", "random", steps=6) == 0
    assert run_train(2, images, split, "--init", "random", "--checkpoint-every", "2", steps=3) == 0
    content = torch.load(split, map_location="cpu", weights_only=True)
    assert content["step"] == 3 and content["stage"] == 2 and content["config"] == CONFIG
    assert run_train(2, images, split, "--resume", steps=6) == 0
    a, b = net_g(whole), net_g(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(whole.with_name("whole.ckpt.jsonl"))]
    resumed = [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(split.with_name("split.ckpt.jsonl"))]
    assert resumed == strip


def test_resume_refuses_other_settings(tmp_path, images, capsys):
    out = tmp_path / "s2.ckpt"
    assert run_train(2, images, out, "--init", "random", steps=1) == 0
    capsys.readouterr()
    assert run_train(2, images, out, "--resume", "--lambdas", "1,2,3,4", steps=2) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot resume: its training is" in err


def test_stage3_trains_the_generator_against_a_discriminator(tmp_path, images):
    first, out = tmp_path / "s2.ckpt", tmp_path / "s3.ckpt"
    assert run_train(2, images, first, "--init", "random", steps=1) == 0
    assert run_train(3, images, out, "--init", str(first), *stage3_options(), steps=3) == 0
    log = read_log(out.with_name("s3.ckpt.jsonl"))
    assert len(log) == 3 and {"l1", "lpips", "gan_g", "gan_weight", "disc", "code_ce", "bpp"} <= log[0].keys()
    assert all(0 <= r["gan_weight"] <= 1 for r in log)
    content = torch.load(out, map_location="cpu", weights_only=True)
    assert content["stage"] == 3 and "discriminator" in content and "disc_optimizer" in content
    before, after = net_g(first), content["net_g"]
    for frozen in ("vqgan.encoder.", "vqgan.quantize.", "code_pred_loss."):
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(frozen)), frozen
    for trained in ("vqgan.generator.", "dec.", "enc.", "code_pred_pix_loss."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(trained)), trained
    # ...and it resumes, discriminator and its optimiser included.
    assert run_train(3, images, out, "--resume", *stage3_options(), steps=4) == 0
    assert len(read_log(out.with_name("s3.ckpt.jsonl"))) == 4


def test_stage3_without_gan_has_no_discriminator(tmp_path, images):
    out = tmp_path / "s3.ckpt"
    assert run_train(3, images, out, "--init", "random", *stage3_options("--lambda-gan", "0"), steps=1) == 0
    content = torch.load(out, map_location="cpu", weights_only=True)
    assert "discriminator" not in content and "disc" not in read_log(out.with_name("s3.ckpt.jsonl"))[0]


@pytest.mark.parametrize("code_prediction", [False, True])
def test_the_checkpoint_loads_like_a_release_checkpoint(tmp_path, images, code_prediction):
    out = tmp_path / "s2.ckpt"
    assert run_train(2, images, out, "--init", "random", steps=1) == 0
    state = read_checkpoint(out)
    model = GLCImage(CFG, code_prediction=code_prediction)
    load_weights(model, state, out, CONFIG)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_an_inference_only_init_gets_random_code_predictors(tmp_path, images):
    init = tmp_path / "release.pth"
    torch.manual_seed(5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in GLCImage(CFG).state_dict().items()}}, init)
    out = tmp_path / "s2.ckpt"
    assert run_train(2, images, out, "--init", str(init), steps=1) == 0
    given, after = read_checkpoint(init), net_g(out)
    assert all(torch.equal(given[k], after[k]) for k in given if k.startswith("vqgan."))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ulbc: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("case, problem", [
    ("empty folder", "no PNG or JPEG images"),
    ("no folder", "no such folder"),
    ("crop", "crop 96 is not a multiple of 64"),
    ("code prediction crop", "give --crop 64, or --beta 0"),
    ("missing init", "neither a file nor a registered weights name"),
    ("no init", "give --init"),
    ("lambdas", "3 λ value(s) given"),
    ("lambdas text", "expected comma-separated numbers"),
    ("not a checkpoint", "not a GLC checkpoint"),
    ("resume nothing", "no checkpoint to resume"),
])
def test_bad_input_is_one_line(tmp_path, images, capsys, case, problem):
    out = tmp_path / "out.ckpt"
    folder, extra = images, ["--init", "random"]
    if case == "empty folder":
        folder = tmp_path / "empty"
        folder.mkdir()
        (folder / "notes.txt").write_text("no images")
    elif case == "no folder":
        folder = tmp_path / "absent"
    elif case == "crop":
        extra += ["--crop", "96"]
    elif case == "code prediction crop":
        extra += ["--crop", "128"]
    elif case == "missing init":
        extra = ["--init", str(tmp_path / "absent.pth")]
    elif case == "no init":
        extra = []
    elif case == "lambdas":
        extra += ["--lambdas", "1,2,3"]
    elif case == "lambdas text":
        extra += ["--lambdas", "1,two,3,4"]
    elif case == "not a checkpoint":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"not torch")
        extra = ["--init", str(bad)]
    elif case == "resume nothing":
        extra = ["--resume"]
    assert run_train(2, folder, out, *extra, steps=1) == 2
    assert problem in _one_line_error(capsys)
    assert not out.exists()


def test_an_existing_checkpoint_is_not_overwritten(tmp_path, images, capsys):
    out = tmp_path / "s2.ckpt"
    assert run_train(2, images, out, "--init", "random", steps=1) == 0
    capsys.readouterr()
    assert run_train(2, images, out, "--init", "random", steps=1) == 2
    assert "give --resume" in _one_line_error(capsys)


def test_a_missing_lpips_backbone_names_the_import_command(tmp_path, images, capsys, monkeypatch):
    isolate_weights(monkeypatch, tmp_path / "no-weights", tmp_path / "torch")
    assert run_train(3, images, tmp_path / "s3.ckpt", "--init", "random", "--disc-width", "8", steps=1) == 2
    err = _one_line_error(capsys)
    assert "torchvision-vgg16" in err and "ulbc weights import" in err


def test_image_folder_crops_depend_on_seed_and_step_only(tmp_path):
    folder = write_images(tmp_path / "images")
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(folder / "small.png")  # scaled up to the crop
    data = train.ImageFolderSet(folder, crop=64)
    assert len(data) == 4 and any(p.suffix == ".jpg" for p in data.paths)
    batch = data.batch(seed=1, step=5, batch_size=8)
    assert batch.shape == (8, 3, 64, 64) and batch.min() >= -1 and batch.max() <= 1
    assert torch.equal(batch, train.ImageFolderSet(folder, crop=64).batch(seed=1, step=5, batch_size=8))
    assert not torch.equal(batch, data.batch(seed=1, step=6, batch_size=8))
    # Each epoch visits every image once.
    assert sorted(train.epoch_order(4, seed=2, step=1, batch_size=4)) == [0, 1, 2, 3]


def test_adaptive_weight_matches_the_release_per_image_gradients():
    torch.manual_seed(0)
    last = torch.nn.Conv2d(4, 3, 3, padding=1)
    critic = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2),
                                 torch.nn.Conv2d(4, 1, 4, padding=1))
    features = torch.randn(3, 4, 16, 16)
    target = torch.rand(3, 3, 16, 16) * 2 - 1
    x_hat = last(features)
    reconstruction = (x_hat - target).abs().flatten(1).mean(1)
    adversarial = -critic(x_hat).flatten(1).mean(1)
    got = train.adaptive_gan_weight(reconstruction, adversarial, x_hat, last.weight, max_weight=1e4)
    expected = []
    for index in range(3):  # the release's calculate_adaptive_weight ("vqgan_dec")
        g = torch.autograd.grad(adversarial[index], last.weight, retain_graph=True)[0]
        r = torch.autograd.grad(reconstruction[index], last.weight, retain_graph=True)[0]
        expected.append(r.norm() / (g.norm() + 1e-4))
    assert torch.allclose(got, torch.stack(expected), rtol=1e-5)
    assert torch.all(train.adaptive_gan_weight(reconstruction, adversarial, x_hat, last.weight, 0.01) <= 0.01)


def test_patch_discriminator_scores_patches():
    disc = train.PatchDiscriminator(width=8, layers=4)
    assert disc(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 2, 2)
    assert disc(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 14, 14)
