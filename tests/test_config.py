import pytest

from ulbc.config import check_study, load_config, plan_methods, validate_with_schema
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
        elif plan.codec == "supermask-nerv":  # the video INR: two widths
            assert len(plan.rates) == 2 and plan.gpu == 1
        elif plan.codec == "misc":  # offline stages: no GPU; its BD-rate is n/a (no quality overlap)
            assert len(plan.rates) == 3 and plan.gpu == 0
        else:  # four points each, enough for a BD-rate; MISC's offline stages need no GPU
            assert len(plan.rates) == 4 and plan.gpu == 0


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


@pytest.mark.parametrize("method, rates", [("jpeg", [12.2, 12.7]), ("webp", [50.1, 50.9])])
def test_fractional_qualities_are_refused(method, rates):
    # int(quality) made both points one bitstream, counted twice.
    with pytest.raises(ConfigError, match=rf"^methods\.{method}\.rates: codec '{method}': quality must be a whole "
                                          rf"number, got {rates[0]}$"):
        plan_methods(base(methods={method: {"rates": rates}}, anchor=method))
    plans = plan_methods(base(methods={method: {"rates": [12.0, 13]}}, anchor=method))  # 12.0 is whole
    assert [p.label for p in plans[method].rates] == ["quality12", "quality13"]


def test_bad_option_values_are_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"^methods\.jpeg: codec 'jpeg': option subsampling must be one of "
                                          r"4:4:4, 4:2:2, 4:2:0, got 'banana'$"):
        check_study(base(methods={"jpeg": {"options": {"subsampling": "banana"}}}))
    with pytest.raises(ConfigError, match=r"^methods\.webp: codec 'webp': option method must be an integer"):
        check_study(base(methods={"jpeg": {}, "webp": {"options": {"method": "banana"}}}))


@pytest.mark.parametrize("text, message", [
    ("- datasets\n- methods\n", "not a list"),
    ("just some words\n", "not a string"),
    ("42\n", "not a number"),
    ("", "is empty: a study needs at least datasets and methods"),
    ("# nothing but a comment\n", "is empty"),
    ("{}\n", "is empty"),
])
def test_a_config_that_is_not_a_mapping_or_is_empty(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: .*{message}"):
        load_config(path)


def test_unreadable_config_error_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("datasets:\n  d: {source: samples\nmethods: {jpeg: {}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: cannot read config")


def test_local_dataset_path_must_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "sub" / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")

    def study(**entry):
        return base(datasets={"mine": {"source": "local", **entry}})

    for path in ("imgs", str(tmp_path / "imgs"), "imgs/**/*.png", "imgs/sub/*.png"):
        check_study(study(path=path))  # a folder, or a glob that matches a file
    for path, problem in [("nowhere", "path nowhere does not exist"), ("notes.txt", "path notes.txt is not a folder"),
                          ("imgs/*.jpg", "no files match path imgs/\\*.jpg"),
                          ("imgs/*", "no files match path imgs/\\*")]:  # matches a folder only
        with pytest.raises(ConfigError, match=rf"^datasets\.mine: {problem} \(relative to the current directory, "):
            check_study(study(path=path))
    with pytest.raises(ConfigError, match=rf"^datasets\.mine: path {tmp_path}/gone does not exist$"):
        check_study(study(path=str(tmp_path / "gone")))
    # A video dataset may name one file, as the frame extraction reads it.
    check_study(study(path="notes.txt", video={}))
