"""MISC's local vision-language captioner: a zipped transformers model folder fetched from 127.0.0.1
through the weights manager, unpacked once, asked the question about the image (greedy decoding).
The model is a tiny LLaVA taught one five-line answer, so the test sees a real generate() give it."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest
import yaml

from test_download import FixtureServer
from test_weights import isolate_weights
from ulbc import weights
from ulbc.errors import InputError

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from standin_weights import VLM_ANSWER, write_vlm_standin  # noqa: E402
from ulbc.codecs import get_codec  # noqa: E402
from ulbc.misc import vlm  # noqa: E402
from ulbc.misc.answer import parse_answer  # noqa: E402
from ulbc.misc.captioners import get_captioner  # noqa: E402

PROMPT = "w1 w2 w3"
IMAGE = np.full((40, 50, 3), 90, np.uint8)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vlm")
    return {"taught": write_vlm_standin(folder, prompt=PROMPT, image=IMAGE),
            "untaught": write_vlm_standin(folder, prompt=PROMPT, image=IMAGE, teach=False)}


def _entry(name, path):
    return {"name": name, "file_name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size, "licence": "test (random values)", "used_by": ["misc"],
            "description": "a tiny LLaVA in a zipped transformers folder"}


@pytest.fixture
def registered(archives, tmp_path, monkeypatch):
    isolate_weights(monkeypatch, tmp_path / "weights", tmp_path / "torch")
    vlm._LOADED.clear()
    entries = [_entry("standin-tiny-llava", archives["taught"]), _entry("standin-untaught", archives["untaught"])]
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(entries))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    files = {f"/{path.name}": path.read_bytes() for path in archives.values()}
    with FixtureServer(files=files) as server:
        monkeypatch.setenv("ULBC_WEIGHTS_MIRROR", server.url(""))
        for entry in entries:
            weights.fetch(entry["name"], progress=False)
    monkeypatch.delenv("ULBC_WEIGHTS_MIRROR")
    yield registry
    monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY")
    weights._sync_site_registry()
    vlm._LOADED.clear()


def test_the_local_model_answers_and_the_codec_stores_its_caption(registered):
    captioner = get_captioner("transformers", weights="standin-tiny-llava", prompt=PROMPT, device="cpu")
    answer = captioner.describe(IMAGE, "grey")
    assert answer == parse_answer(VLM_ANSWER.replace(" ,", ",").replace(" .", "."), "x")
    assert answer.objects == ("w4", "w5", "w6") and answer.overall == "w13 w14 w15."
    folder = vlm.unpacked_folder("standin-tiny-llava")
    assert (folder / "config.json").is_file() and vlm.unpacked_folder("standin-tiny-llava") == folder
    codec = get_codec("misc", captioner="transformers",
                      captioner_options={"weights": "standin-tiny-llava", "prompt": PROMPT, "device": "cpu"})
    assert codec.encode_result(IMAGE, 30, name="grey").info["objects"] == ["w4", "w5", "w6"]


def test_an_answer_out_of_format_is_one_line_naming_the_item_and_the_model(registered):
    captioner = get_captioner("transformers", weights="standin-untaught", prompt=PROMPT, device="cpu")
    with pytest.raises(InputError, match=r"^grey \(answer of standin-untaught\): the answer has \d+ non-empty"):
        captioner.describe(IMAGE, "grey")


def test_a_missing_model_names_the_weights_command(tmp_path, monkeypatch):
    isolate_weights(monkeypatch, tmp_path / "weights", tmp_path / "torch")
    archive = tmp_path / "m.zip"
    archive.write_bytes(b"PK")
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump([_entry("standin-gone", archive)]))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    try:
        with pytest.raises(weights.WeightsMissingError, match=r"m\.zip \(weights 'standin-gone'\).*ulbc weights"):
            get_captioner("transformers", weights="standin-gone").describe(IMAGE, "grey")
    finally:
        monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY")
        weights._sync_site_registry()


@pytest.mark.parametrize("member, message", [("../evil.txt", "points outside the folder"),
                                             ("/abs.txt", "points outside the folder"),
                                             ("model/readme.txt", "no config.json")])
def test_hostile_or_wrong_archives_are_refused_before_use(tmp_path, monkeypatch, member, message):
    isolate_weights(monkeypatch, tmp_path / "weights", tmp_path / "torch")
    archive = tmp_path / f"bad-{hashlib.sha256(member.encode()).hexdigest()[:8]}.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(member, "x")
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump([_entry("standin-bad", archive)]))
    monkeypatch.setenv("ULBC_WEIGHTS_REGISTRY", str(registry))
    try:
        weights.import_file(archive, "standin-bad")
        with pytest.raises(InputError, match=message):
            vlm.unpacked_folder("standin-bad")
        assert not list((tmp_path / "weights").glob("*.d")) and not (tmp_path / "evil.txt").exists()
    finally:
        monkeypatch.delenv("ULBC_WEIGHTS_REGISTRY")
        weights._sync_site_registry()
