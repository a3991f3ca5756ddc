"""The dynamic adapter (ICIP 2024) and `ulbc train adapter`: a tiny random CompressAI stand-in, a
random Mask R-CNN at 64-96 px and a synthetic COCO set, all offline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ulbc import cli, weights
from ulbc.errors import BitstreamError, ConfigError, InputError

from standin_weights import write_compressai_standins
from test_weights import isolate_weights

torch = pytest.importorskip("torch")
pytest.importorskip("compressai")
pytest.importorskip("pycocotools")

from ulbc.adapter import network, train  # noqa: E402 - after the skips
from ulbc.adapter.coco import CocoDetectionSet, decode_mask  # noqa: E402
from ulbc.tasknets import detectors  # noqa: E402

BASE = "mbt2018-mean"
TASK = "maskrcnn_resnet50_fpn"
TASK_WEIGHTS = "test-random-maskrcnn"
BASE_WEIGHTS = f"standin-compressai-{BASE}-q1"


def _entry(name: str, path: Path) -> dict:
    return {"name": name, "file_name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size, "licence": "test (random values)", "used_by": ["tests"],
            "description": "random-initialised test network"}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """A random Mask R-CNN and a random mbt2018-mean q1 in one cache folder, and their registry."""
    folder = tmp_path_factory.mktemp("adapter-weights")
    torch.manual_seed(0)
    detector_file = folder / "random-maskrcnn.pth"
    torch.save(detectors.build_detector(TASK, min_size=64, max_size=96).state_dict(), detector_file)
    _, entries = write_compressai_standins(folder, BASE, [1])
    registry = folder / "registry.yaml"
    registry.write_text(yaml.safe_dump([_entry(TASK_WEIGHTS, detector_file), *entries], sort_keys=False))
    return folder, registry


#: Fewer proposals and sampled regions than torchvision's defaults (2000 and 512 per image): on a
#: random detector most regions overlap the few objects, and the box and mask heads on hundreds of
#: them made a CPU step take seconds. The losses are Mask R-CNN's all the same.
SMALL_SAMPLING = {"proposals": 100, "regions": 32}


def _small_sampling(load_detector):
    def load(*args, **kwargs):
        model = load_detector(*args, **kwargs)
        count = SMALL_SAMPLING["proposals"]
        model.rpn._pre_nms_top_n = dict(training=count, testing=count)
        model.rpn._post_nms_top_n = dict(training=count, testing=count)
        model.roi_heads.fg_bg_sampler.batch_size_per_image = SMALL_SAMPLING["regions"]
        return model

    return load


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, weight_files):
    folder, registry = weight_files
    isolate_weights(monkeypatch, folder, tmp_path / "torch")
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    monkeypatch.setattr(detectors, "load_detector", _small_sampling(detectors.load_detector))
    yield
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY", raising=False)
    weights._sync_site_registry()


def _polygon(rng, cx, cy, radius):
    angles = np.arange(5) * 2 * np.pi / 5 + rng.uniform(0, 0.5, 5)  # a convex pentagon
    return [float(v) for a in angles for v in (cx + radius * np.cos(a), cy + radius * np.sin(a))]


def make_coco(folder: Path, sizes=((64, 80), (72, 64), (96, 72), (64, 64)), seed: int = 0) -> tuple[Path, Path]:
    """Images with coloured polygons on noise, their instances JSON (polygons, one RLE, one crowd
    annotation, one image without annotations)."""
    from PIL import Image
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    images, annotations, categories = [], [], [1, 3, 18, 44]
    for image_id, (height, width) in enumerate(sizes, start=1):
        pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        for k in range(2):
            polygon = _polygon(rng, rng.uniform(16, width - 16), rng.uniform(16, height - 16), rng.uniform(8, 14))
            mask = decode_mask([polygon], height, width, "test")
            pixels[mask.astype(bool)] = rng.integers(120, 256, 3)
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            segmentation = polygon
            if image_id == 2 and k == 1:  # compressed RLE, as COCO stores some instances
                rle = coco_mask.encode(np.asfortranarray(mask))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                segmentation = [polygon]
            if image_id == len(sizes):
                continue  # the last image has no annotation: it is left out
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": box,
                                "category_id": categories[(image_id + k) % 4], "iscrowd": 0,
                                "segmentation": segmentation, "area": float(mask.sum())})
        Image.fromarray(pixels).save(images_dir / f"{image_id:06d}.png")
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "height": height, "width": width})
    annotations.append({"id": len(annotations) + 1, "image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 1,
                        "iscrowd": 1, "segmentation": {"size": [64, 80], "counts": [0, 64 * 80]}, "area": 100})
    annotations_file = folder / "instances.json"
    annotations_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                            "categories": [{"id": c, "name": str(c)} for c in categories]}))
    return images_dir, annotations_file


@pytest.fixture
def coco(tmp_path):
    return make_coco(tmp_path / "coco")


def run_train(coco, out: Path, *extra: str, steps: int = 4, batch: int = 1) -> int:
    images, annotations = coco
    return cli.main(["train", "adapter", "--base", BASE, "--base-weights", BASE_WEIGHTS, "--quality", "1",
                     "--task", TASK, "--task-weights", TASK_WEIGHTS, "--task-min-size", "64", "--task-max-size",
                     "96", "--images", str(images), "--annotations", str(annotations), "--out", str(out),
                     "--steps", str(steps), "--batch-size", str(batch), "--crop", "48", "--width", "16", "--lr", "1e-3",
                     "--device", "cpu", "--seed", "3", "--quiet", *extra])


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def capture(monkeypatch, module, name: str) -> list:
    made = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(module, name, wrapper)
    return made


def same_state(module, state: dict) -> bool:
    own = module.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k].cpu(), state[k]) for k in own)


# -- the network ----------------------------------------------------------------------------------------
def test_the_network_has_the_papers_layout_and_starts_as_the_identity():
    from compressai.layers import AttentionBlock

    adapter = network.DynamicAdapter()
    blocks = [type(b).__name__ for b in adapter.blocks]
    assert blocks == ["ResidualBottleneck"] * 2 + ["AttentionBlock"] + ["ResidualBottleneck"] * 2
    assert isinstance(adapter.blocks[2], AttentionBlock)
    assert adapter.head.kernel_size == (5, 5) and adapter.tail.kernel_size == (5, 5)
    assert adapter.width == network.DEFAULT_WIDTH
    x = torch.rand(2, 3, 20, 28)
    assert torch.equal(adapter(x), x)
    with pytest.raises(ValueError, match="even width"):
        network.DynamicAdapter(width=15)


def _fresh_checkpoint(path: Path, width: int = 8) -> Path:
    adapter = network.DynamicAdapter(3, width)
    header = network.make_header(adapter={"channels": 3, "width": width}, steps_done=0)
    network.save_checkpoint(path, network.checkpoint_content(header, adapter))
    return path


def test_a_fresh_adapter_is_the_identity_on_uint8_images(tmp_path, photo):
    path = _fresh_checkpoint(tmp_path / "fresh.pt")
    out = network.apply_adapter(path, photo)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    assert np.array_equal(out, photo)
    loaded = network.load_adapter(path)
    assert np.array_equal(network.apply_adapter(loaded, photo[:17, :23]), photo[:17, :23])
    with pytest.raises(InputError, match=r"expected an \(H, W, 3\) uint8 image"):
        network.apply_adapter(loaded, photo.astype(np.float32))


def test_damaged_or_foreign_checkpoints_are_one_line_errors(tmp_path, weight_files):
    folder, _ = weight_files
    cases = {folder / f"{BASE}-q1.pth.tar": "format None",
             tmp_path / "junk.pt": "not a ulbc dynamic-adapter checkpoint"}
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    truncated = _fresh_checkpoint(tmp_path / "whole.pt")
    (tmp_path / "truncated.pt").write_bytes(truncated.read_bytes()[:300])
    cases[tmp_path / "truncated.pt"] = "not a ulbc dynamic-adapter checkpoint"
    content = torch.load(_fresh_checkpoint(tmp_path / "w8.pt"), weights_only=True)
    content["header"] = content["header"].replace('"width": 8', '"width": 10')
    torch.save(content, tmp_path / "mismatch.pt")
    cases[tmp_path / "mismatch.pt"] = "does not fit the header's network"
    content["header"] = content["header"].replace('"format_version": 1', '"format_version": 7')
    torch.save(content, tmp_path / "future.pt")
    cases[tmp_path / "future.pt"] = "format version 7 is not supported"
    cases[tmp_path / "absent.pt"] = "no such file"
    for path, message in cases.items():
        with pytest.raises(InputError, match=message) as caught:
            network.apply_adapter(path, np.zeros((8, 8, 3), np.uint8))
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# -- the COCO reader --------------------------------------------------------------------------------------
def test_coco_reader_makes_torchvision_targets(coco):
    images_dir, annotations_file = coco
    dataset = CocoDetectionSet(images_dir, annotations_file, crop=None, flip=False)
    assert len(dataset) == 3  # the image without annotations is left out
    image, target = dataset.sample(0, np.random.default_rng(0))
    assert image.dtype == torch.float32 and image.shape == (3, 64, 80) and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].shape == (2, 4) and target["boxes"].dtype == torch.float32  # the crowd one is left out
    assert target["labels"].tolist() == [3, 18]
    assert target["masks"].shape == (2, 64, 80) and target["masks"].dtype == torch.uint8
    for box, mask in zip(target["boxes"], target["masks"]):  # xyxy: the box holds its mask
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box[0] <= xs.min() and xs.max() < box[2] and box[1] <= ys.min() and ys.max() < box[3]
    _, rle_target = dataset.sample(1, np.random.default_rng(0))
    assert rle_target["masks"].sum(dim=(1, 2)).min() > 20  # the RLE mask decodes too


def test_coco_crops_are_deterministic_for_a_seed(coco):
    dataset = CocoDetectionSet(*coco, crop=40)
    first_images, first_targets = dataset.batch(5, 7, 3)
    again_images, again_targets = dataset.batch(5, 7, 3)
    other_images, _ = dataset.batch(6, 7, 3)
    assert all(image.shape == (3, 40, 40) for image in first_images)
    assert all(torch.equal(a, b) for a, b in zip(first_images, again_images))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first_targets, again_targets) for k in a)
    assert not all(torch.equal(a, b) for a, b in zip(first_images, other_images))
    for target in first_targets:
        boxes = target["boxes"]
        assert ((boxes >= 0) & (boxes <= 40)).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all() and target["masks"].shape[1:] == (40, 40)
    # every image once per epoch
    assert sorted(dataset.indices(5, 0, 3)) == [0, 1, 2]


def test_bad_coco_files_are_one_line_errors(tmp_path, coco):
    images_dir, annotations_file = coco
    content = json.loads(annotations_file.read_text())
    bad = tmp_path / "bad.json"
    cases = [("{not json", "cannot be read as JSON"),
             (json.dumps({"images": []}), "no 'annotations' list"),
             (json.dumps(dict(content, annotations=[dict(content["annotations"][0], category_id=91)])),
              r"category_id 91 is outside COCO's 1..90"),
             (json.dumps(dict(content, annotations=[dict(content["annotations"][0], image_id=99)])),
              "names no listed image"),
             (json.dumps(dict(content, annotations=[])), "no image has a usable")]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(InputError, match=message) as caught:
            CocoDetectionSet(images_dir, bad)
        assert str(bad) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="no such file"):
        CocoDetectionSet(images_dir, tmp_path / "absent.json")
    broken = dict(content, annotations=[dict(content["annotations"][0], segmentation=[[1, 2]])])
    bad.write_text(json.dumps(broken))
    with pytest.raises(InputError, match="unusable segmentation"):
        CocoDetectionSet(images_dir, bad).sample(0, np.random.default_rng(0))


# -- training ---------------------------------------------------------------------------------------------
def test_training_lowers_the_task_loss_and_changes_only_the_adapter(tmp_path, monkeypatch, coco, weight_files):
    folder, _ = weight_files
    detectors_made = capture(monkeypatch, detectors, "load_detector")
    codecs_made = capture(monkeypatch, train, "load_base_codec")
    images_dir, annotations_file = coco
    # One repeated batch: the two first images, whole, unflipped, every step.
    content = json.loads(annotations_file.read_text())
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] in (1, 2)]
    two = tmp_path / "two.json"
    two.write_text(json.dumps(content))
    out = tmp_path / "run" / "adapter.pt"
    assert run_train((images_dir, two), out, "--crop", "0", "--no-flip", "--checkpoint-every", "100",
                     "--lambda-m", "1", steps=8, batch=2) == 0
    log = read_log(out.with_name("adapter.pt.jsonl"))
    assert [r["step"] for r in log] == list(range(1, 9))
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(log[0])
    first, last = np.mean([r["task"] for r in log[:3]]), np.mean([r["task"] for r in log[-3:]])
    assert last < first
    assert len({r["bpp"] for r in log}) == 1 and len({r["mse"] for r in log}) == 1  # the frozen codec's constants

    # the detector and the codec are exactly as loaded
    assert same_state(detectors_made[0], torch.load(folder / "random-maskrcnn.pth", weights_only=True))
    from ulbc.compressai_runtime import state_dict_of

    codec_file = folder / f"{BASE}-q1.pth.tar"
    assert same_state(codecs_made[0], state_dict_of(torch.load(codec_file, weights_only=True), codec_file))

    loaded = network.load_adapter(out)
    header = loaded.header
    assert header["steps_done"] == 8 and header["adapter"] == {"channels": 3, "width": 16}
    assert header["base"]["architecture"] == BASE and header["base"]["quality"] == 1
    assert header["base"]["sha256"] == hashlib.sha256(codec_file.read_bytes()).hexdigest()
    assert header["task"]["sha256"] == weights.file_sha256(TASK_WEIGHTS)
    assert header["lambda_h"] == train.COMPRESSAI_MSE_LAMBDAS[1] and header["lambda_m"] == 1
    assert "state_dict" not in loaded.content  # the codec was not trained
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    assert not np.array_equal(network.apply_adapter(loaded, image), image)  # trained: no longer the identity


def test_resumed_training_equals_an_uninterrupted_one(tmp_path, coco):
    whole, halves = tmp_path / "whole.pt", tmp_path / "halves.pt"
    assert run_train(coco, whole, "--checkpoint-every", "2", steps=4) == 0
    assert run_train(coco, halves, steps=2) == 0
    with open(halves.with_name(halves.name + ".jsonl"), "a") as log:  # a step logged, then killed before its checkpoint
        log.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
    assert run_train(coco, halves, "--resume", steps=4) == 0
    a, b = torch.load(whole, weights_only=True), torch.load(halves, weights_only=True)
    assert a["adapter"].keys() == b["adapter"].keys()
    assert all(torch.equal(a["adapter"][k], b["adapter"][k]) for k in a["adapter"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    moments = lambda c: [s[k] for s in c["optimizer"]["state"].values() for k in ("exp_avg", "exp_avg_sq")]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b))) and len(moments(a)) > 0
    losses = lambda p: [(r["step"], r["loss"]) for r in read_log(p.with_name(p.name + ".jsonl"))]  # noqa: E731
    assert losses(whole) == losses(halves) and len(losses(whole)) == 4
    # a changed setting is refused, and an existing checkpoint is not overwritten without --resume
    assert run_train(coco, halves, "--resume", "--lambda-m", "2", steps=6) == 2
    assert run_train(coco, halves, steps=6) == 2


def test_finetuning_the_codec_trains_it_end_to_end(tmp_path, monkeypatch, coco, weight_files):
    folder, _ = weight_files
    codecs_made = capture(monkeypatch, train, "load_base_codec")
    out = tmp_path / "finetuned.pt"
    assert run_train(coco, out, "--finetune-codec", steps=2) == 0
    log = read_log(out.with_name(out.name + ".jsonl"))
    assert len(log) == 2 and all("aux" in r for r in log)
    saved = torch.load(out, weights_only=True)
    codec_file = folder / f"{BASE}-q1.pth.tar"
    original = torch.load(codec_file, weights_only=True)
    assert not same_state(codecs_made[0], original)
    assert same_state(codecs_made[0], saved["state_dict"])
    # the checkpoint serves as the codec's checkpoint: ulbc's CompressAI runtime loads it
    from ulbc import compressai_runtime

    model = compressai_runtime.load_model(BASE, out, weights.path_sha256(out), update=True)
    assert torch.equal(model.net.g_s[0].weight, saved["state_dict"]["g_s.0.weight"])


def test_bad_inputs_are_one_line_errors(tmp_path, coco, capsys, weight_files):
    images, annotations = coco
    assert run_train((images, tmp_path / "absent.json"), tmp_path / "a.pt") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "absent.json") in err and "no such file" in err
    folder, _ = weight_files
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes((folder / f"{BASE}-q1.pth.tar").read_bytes())
    assert run_train(coco, foreign, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{foreign}: not a ulbc dynamic-adapter checkpoint" in err
    assert run_train(coco, tmp_path / "b.pt", "--base-weights", str(tmp_path / "nothing.pth")) == 2
    assert "neither a file nor a registered weights name" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no CompressAI λ is known for quality 9"):
        train.default_lambda_h(9)


# -- <base>+adapter: one file, two decodes ------------------------------------------------------------------
ADAPTED = f"{BASE}+adapter"


def _adapter_for_codec(tmp_path: Path, quality: int = 1, **header_changes) -> Path:
    """An adapter trained (here: made) for the registered stand-in codec, random output layer."""
    from standin_weights import write_adapter_standins

    folder = tmp_path / "adapters"
    pattern = write_adapter_standins(folder, BASE, [quality])
    path = Path(pattern.replace("{quality}", str(quality)))
    if header_changes:
        content = torch.load(path, weights_only=True)
        header = json.loads(content["header"])
        for key, value in header_changes.items():
            header[key] = {**header.get(key, {}), **value}
        content["header"] = json.dumps(header)
        path = folder / "changed.pt"
        torch.save(content, path)
    return path


def test_one_file_decodes_for_viewing_and_through_the_adapter(tmp_path, photo, capsys):
    from PIL import Image

    from ulbc.codecs import decode_bitstream_data, get_codec

    adapter = _adapter_for_codec(tmp_path)
    image = np.ascontiguousarray(photo[:64, :80])
    source = tmp_path / "x.png"
    Image.fromarray(image).save(source)
    out = tmp_path / "x.ulb"
    options = json.dumps({"checkpoint": BASE_WEIGHTS, "adapter": str(adapter)})
    assert cli.main(["encode", str(source), str(out), "--codec", ADAPTED, "--rate", "1", "--options", options]) == 0
    data = out.read_bytes()
    plain = get_codec(BASE, checkpoint=BASE_WEIGHTS).encode(image, 1)
    # The base codec's strings, and its parameters behind the adapter block.
    from ulbc import bitstream

    mine, theirs = bitstream.parse(data), bitstream.parse(plain)
    assert mine.payload == theirs.payload and mine.params.endswith(theirs.params)
    capsys.readouterr()
    assert cli.main(["decode", str(out), str(tmp_path / "human.png")]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == "human"
    assert cli.main(["decode", str(out), str(tmp_path / "machine.png"), "--for", "machine"]) == 0
    human = np.asarray(Image.open(tmp_path / "human.png"))
    machine = np.asarray(Image.open(tmp_path / "machine.png"))
    assert np.array_equal(human, decode_bitstream_data(plain, device="cpu", name="plain")[2])
    assert np.array_equal(machine, network.apply_adapter(adapter, human)) and not np.array_equal(machine, human)
    # A codec without a machine decode says so in one line.
    jpeg = tmp_path / "x-jpeg.ulb"
    jpeg.write_bytes(get_codec("jpeg").encode(image, 50))
    assert cli.main(["decode", str(jpeg), str(tmp_path / "j.png"), "--for", "machine"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "jpeg has no decode for machines" in err and str(jpeg) in err


def test_the_adapter_must_be_the_one_trained_for_the_codec(tmp_path, photo):
    from ulbc.codecs import decode_bitstream_data, get_codec

    image = np.ascontiguousarray(photo[:64, :64])
    other_quality = _adapter_for_codec(tmp_path, base={"quality": 2})
    with pytest.raises(ConfigError, match=r"was trained for mbt2018-mean quality 2, not mbt2018-mean quality 1"):
        get_codec(ADAPTED, checkpoint=BASE_WEIGHTS, adapter=str(other_quality)).check_resources(1)
    other_weights = _adapter_for_codec(tmp_path, base={"sha256": "0" * 64})
    with pytest.raises(ConfigError, match="was trained on codec weights of sha256 0000"):
        get_codec(ADAPTED, checkpoint=BASE_WEIGHTS, adapter=str(other_weights)).encode(image, 1)
    finetuned = _adapter_for_codec(tmp_path, training={"finetune_codec": True})
    with pytest.raises(ConfigError, match="fine-tuned: set checkpoint: to the same file"):
        get_codec(ADAPTED, checkpoint=BASE_WEIGHTS, adapter=str(finetuned)).encode(image, 1)
    with pytest.raises(ConfigError, match="needs adapter:"):
        get_codec(ADAPTED, checkpoint=BASE_WEIGHTS).check_resources(1)
    with pytest.raises(ConfigError, match="neither a file nor a registered weights name"):
        get_codec(ADAPTED, checkpoint=BASE_WEIGHTS, adapter=str(tmp_path / "absent.pt")).check_resources(1)

    # A file whose adapter changed (or went) after encoding: viewing still works, the machine decode refuses.
    adapter = _adapter_for_codec(tmp_path)
    data = get_codec(ADAPTED, checkpoint=BASE_WEIGHTS, adapter=str(adapter)).encode(image, 1)
    saved = adapter.read_bytes()
    content = torch.load(adapter, weights_only=True)
    content["adapter"]["tail.bias"] += 0.5
    torch.save(content, adapter)
    decode_bitstream_data(data, device="cpu", name="x.ulb")
    with pytest.raises(BitstreamError, match=r"x.ulb: made with adapter .* of sha256 [0-9a-f]{16}\.\.\., but"):
        decode_bitstream_data(data, device="cpu", name="x.ulb", target="machine")
    adapter.unlink()
    with pytest.raises(BitstreamError, match="which is not on this machine"):
        decode_bitstream_data(data, device="cpu", name="x.ulb", target="machine")
    adapter.write_bytes(saved)
    decode_bitstream_data(data, device="cpu", name="x.ulb", target="machine")


def test_damaged_adapter_blocks_fail_in_one_line(tmp_path, photo):
    """Every byte of the adapter block flipped (CRC recomputed): both decodes give an image or a
    one-line BitstreamError."""
    from ulbc import bitstream
    from ulbc.codecs import decode_bitstream_data, get_codec

    adapter = _adapter_for_codec(tmp_path)
    data = get_codec(ADAPTED, checkpoint=BASE_WEIGHTS, adapter=str(adapter)).encode(
        np.ascontiguousarray(photo[:32, :32]), 1)
    container = bitstream.parse(data)
    block = 2 + 1 + len(str(adapter).encode()) + 8
    refused = 0
    for index in range(block + 2):
        for flip in (0x01, 0x80):
            params = bytearray(container.params)
            params[index] ^= flip
            damaged = bitstream.Container(container.codec_id, 32, 32, bytes(params), container.payload).to_bytes()
            for target in ("human", "machine"):
                try:
                    _, _, image, _ = decode_bitstream_data(damaged, device="cpu", name="d.ulb", target=target)
                    assert image.shape == (32, 32, 3)
                except BitstreamError as exc:
                    assert "\n" not in str(exc) and str(exc).startswith("d.ulb: ")
                    refused += 1
    assert refused > 2 * block


@pytest.mark.slow
def test_a_study_of_a_trained_adapter_has_machine_rows(tmp_path, coco):
    """`ulbc train adapter` (a random Mask R-CNN, a few steps), then a study of the base codec and of
    <base>+adapter with that adapter: human rows for both, machine rows for the adapter, detection
    mAP for each of the three, from the same files."""
    import pandas as pd
    import pyarrow.parquet as pq

    from test_workflow import snakemake

    adapter = tmp_path / "adapter.pt"
    assert run_train(coco, adapter, steps=3) == 0
    images, _ = coco
    detection = {"weights": TASK_WEIGHTS, "min_size": 64, "max_size": 96, "detections_per_image": 10,
                 "score_threshold": 0.0, "gt_score": 0.0}
    config = {
        "study": "hm", "items_per_job": 2,
        "datasets": {"coco": {"source": "local", "path": str(images)}},
        "methods": {"plain": {"codec": BASE, "rates": [1], "options": {"checkpoint": BASE_WEIGHTS}},
                    "adapted": {"codec": ADAPTED, "rates": [1],
                                "options": {"checkpoint": BASE_WEIGHTS, "adapter": str(adapter)}}},
        "anchor": "plain", "metrics": ["psnr", "detection"], "metric_options": {"detection": detection},
        "paths": {"results": str(tmp_path / "results"), "datasets": str(tmp_path / "resources")},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake(tmp_path, path, "--cores", "2")
    out = tmp_path / "results" / "hm"
    rows = pq.read_table(out / "metrics.parquet").to_pandas()
    assert (rows["status"] == "ok").all()
    assert rows.groupby(["method", "target"]).size().to_dict() == {
        ("adapted", "human"): 4, ("adapted@machine", "machine"): 4, ("plain", "human"): 4}
    human = rows[rows["method"] == "adapted"].set_index("item")
    machine = rows[rows["method"] == "adapted@machine"].set_index("item")
    plain = rows[rows["method"] == "plain"].set_index("item")
    assert (machine["bytes"] == human["bytes"]).all() and (human["bytes"] > plain["bytes"]).all()  # one file each
    assert (human["psnr_rgb"] == plain["psnr_rgb"]).all()  # viewing: the base codec's decode
    assert (machine["psnr_rgb"] != human["psnr_rgb"]).any()  # the machine decode is the adapter's
    dataset = pq.read_table(out / "dataset_metrics.parquet").to_pandas()
    assert sorted(dataset["method"]) == ["adapted", "adapted@machine", "plain"]
    assert dataset["n_items"].tolist() == [4, 4, 4]
    summary = pd.read_csv(out / "summary.csv")
    assert "adapted@machine" in set(summary["method"]) and "map_bbox" in summary.columns
    table1 = pd.read_csv(out / "task_bdrate.csv").set_index("method")
    assert table1["task_rows"].to_dict() == {"plain": "plain", "adapted": "adapted@machine"}
    assert {"bd_rate_map_bbox", "bd_map_bbox", "bd_rate_map_segm", "bd_map_segm", "bd_rate_psnr_rgb"} <= set(table1)


def test_a_decode_job_writes_machine_decodes_and_records_a_failed_adapter(tmp_path, photo):
    import pyarrow.parquet as pq

    from ulbc.codecs import get_codec
    from ulbc.errors import UlbcError
    from ulbc.imageio import decode_png_bytes
    from ulbc.pack import PackReader, write_pack
    from ulbc.runner import decode_shard

    adapter = _adapter_for_codec(tmp_path)
    image = np.ascontiguousarray(photo[:32, :48])
    pack = tmp_path / "pack.zip"
    write_pack(pack, [("a.ulb", get_codec(ADAPTED, checkpoint=BASE_WEIGHTS, adapter=str(adapter)).encode(image, 1)),
                      ("b.ulb", get_codec("jpeg").encode(image, 50))])
    decode_shard(pack, tmp_path / "d.zip", tmp_path / "log.parquet", out_machine=tmp_path / "m.zip", progress=False)
    with PackReader(tmp_path / "d.zip") as human, PackReader(tmp_path / "m.zip") as machine:
        assert human.names() == ["a.png", "b.png"] and machine.names() == ["a.png"]  # jpeg has no machine decode
        x_hat = decode_png_bytes(human.read("a.png"), "a")
        assert np.array_equal(decode_png_bytes(machine.read("a.png"), "a"), network.apply_adapter(adapter, x_hat))
    log = pq.read_table(tmp_path / "log.parquet").to_pandas().set_index("item")
    assert log.loc["a", "adapt_s"] > 0 and np.isnan(log.loc["b", "adapt_s"]) and (log["machine_error"] == "").all()

    adapter.unlink()  # the adapter is gone: the decode for viewing stands, the machine decode is recorded as failed
    decode_shard(pack, tmp_path / "d2.zip", tmp_path / "log2.parquet", out_machine=tmp_path / "m2.zip",
                 on_error="record", progress=False)
    log = pq.read_table(tmp_path / "log2.parquet").to_pandas().set_index("item")
    assert (log["status"] == "ok").all() and "which is not on this machine" in log.loc["a", "machine_error"]
    with PackReader(tmp_path / "m2.zip") as machine:
        assert machine.names() == []
    with pytest.raises(UlbcError, match="which is not on this machine"):
        decode_shard(pack, tmp_path / "d3.zip", tmp_path / "log3.parquet", out_machine=tmp_path / "m3.zip",
                     progress=False)
    assert not (tmp_path / "d3.zip").exists() and not (tmp_path / "m3.zip").exists()  # nothing half-written
