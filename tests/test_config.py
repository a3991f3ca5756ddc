import pytest

from ulbc.config import check_study, load_config, validate_with_schema
from ulbc.errors import ConfigError

from conftest import REPO


def test_shipped_config_is_valid():
    config = load_config(REPO / "config" / "config.yaml")
    plans = check_study(config)
    assert config["anchor"] in plans
    assert config["items_per_job"] == 500 and config["on_error"] == "fail"  # schema defaults filled
    for plan in plans.values():
        if plan.codec == "lottery":  # the demo's overfitted method: a short grid, asks for a GPU
            assert len(plan.rates) == 3 and plan.gpu == 1
        else:
            assert 5 <= len(plan.rates) <= 7 and plan.gpu == 0


def base(**extra):
    config = {"datasets": {"d": {"source": "samples"}}, "methods": {"jpeg": {}}, "anchor": "jpeg"}
    config.update(extra)
    return validate_with_schema(config)


def test_defaults_and_plans():
    config = base(methods={"jpeg": {"rates": [10, 50]}, "fast-webp": {"codec": "webp", "options": {"method": 2}}})
    plans = check_study(config)
    assert [p.label for p in plans["jpeg"].rates] == ["quality10", "quality50"]
    assert plans["fast-webp"].codec == "webp" and plans["fast-webp"].options == {"method": 2}
    assert plans["jpeg"].mem_mb == 2000 and plans["jpeg"].runtime == 60
    h1 = plans["jpeg"].job_hash({"source": "samples"}, "quality10", 0, 500)
    assert h1 != plans["jpeg"].job_hash({"source": "samples"}, "quality50", 0, 500)
    assert h1 == plans["jpeg"].job_hash({"source": "samples"}, "quality10", 0, 500)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"methods": {"jpeg": {}, "x": {"codec": "nope"}}}, "methods.x: unknown codec 'nope'"),
        ({"methods": {"jpeg": {"options": {"colour": 1}}}}, "methods.jpeg: codec 'jpeg': unknown option"),
        ({"methods": {"jpeg": {"rates": [0.0, 500]}}}, "methods.jpeg.rates"),
        ({"methods": {"jpeg": {"rates": [10, 10]}}}, "duplicate rate points"),
        ({"datasets": {"d": {"source": "imagenet-99"}}}, "datasets.d: unknown source 'imagenet-99'"),
        ({"datasets": {"d": {"source": "local"}}}, "needs a 'path'"),
        ({"metrics": ["psnr", "vmaf"]}, "unknown metric 'vmaf'"),
        ({"anchor": "hevc-intra"}, "anchor 'hevc-intra' is not one of the study's methods"),
    ],
)
def test_semantic_errors(extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_study(base(**extra))


@pytest.mark.parametrize("extra", [{"items_per_job": 0}, {"device": "tpu"}, {"on_error": "ignore"}, {"bogus": 1}])
def test_schema_errors(extra):
    with pytest.raises(ConfigError):
        base(**extra)


def test_unreadable_config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("methods: [unclosed")
    with pytest.raises(ConfigError, match="c.yaml: cannot read config"):
        load_config(p)


def test_missing_ffmpeg_is_a_config_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"methods\.hevc-intra: codec 'hevc-intra' is not available here: .*ffmpeg"):
        check_study(base(methods={"hevc-intra": {}}, anchor="hevc-intra"))


def test_exponent_rates_written_without_a_dot_and_gpu_methods(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("datasets: {d: {source: samples}}\nmethods:\n  lottery: {rates: [4e-3, 1e-3, 0.0004]}\n"
                    "  jpeg: {}\nanchor: jpeg\n")
    plans = check_study(load_config(path))  # YAML 1.1 reads 4e-3 as text; it is still a rate
    assert [p.value for p in plans["lottery"].rates] == [4e-3, 1e-3, 4e-4]
    assert [p.label for p in plans["lottery"].rates] == ["lambda0.004", "lambda0.001", "lambda0.0004"]
    assert plans["lottery"].gpu == 1 and plans["jpeg"].gpu == 0
    with pytest.raises(ConfigError, match="'ten' is not valid"):
        base(methods={"jpeg": {"rates": ["ten"]}})
    assert plans["lottery"].mem_mb == 8000 and plans["lottery"].runtime == 1440  # codec floors
    assert plans["jpeg"].mem_mb == 2000
