"""Codec option declarations (one per option, checked at config time and by the encoder) and
integer rate knobs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from ulbc.codecs import CODECS, get_codec
from ulbc.codecs.base import Codec, Option
from ulbc.errors import ConfigError


def ulbc(*args):
    return subprocess.run([sys.executable, "-m", "ulbc", *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ulbc: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# -- the declaration -------------------------------------------------------------------------------
def test_int_option_refuses_bool_text_fractions_and_out_of_range():
    spec = Option(6, "int", low=0, high=6)
    assert spec.accepts(0) and spec.accepts(6)
    for value in (True, False, "banana", "3", 2.5, 3.0, -1, 7, None, [3]):
        assert not spec.accepts(value), value
    assert spec.requirement() == "an integer in [0, 6]"


def test_float_option_bounds_and_open_low_end():
    spec = Option(0.5, "float", low=0, high=1, low_open=True)
    assert spec.accepts(1) and spec.accepts(1e-9) and spec.accepts(0.5)
    for value in (0, 0.0, 1.0001, float("nan"), float("inf"), True, "0.5"):
        assert not spec.accepts(value), value
    assert spec.requirement() == "a number in (0, 1]"
    assert Option(1, "float", low=0).requirement() == "a number >= 0"


def test_choice_option_matches_value_and_type():
    spec = Option(0, "choice", choices=(0, 1, 5, 9))
    assert spec.accepts(5)
    for value in (True, 1.0, "1", 2):  # True == 1 and 1.0 == 1, but neither is the choice 1
        assert not spec.accepts(value), value
    text = Option("a", "choice", choices=("a", "b"))
    assert text.accepts("b") and not text.accepts("c") and text.requirement() == "one of a, b"


def test_bool_str_keyword_and_list_options():
    flag = Option(True, "bool")
    assert flag.accepts(False) and not flag.accepts(1) and not flag.accepts("yes")
    assert Option("", "str").accepts("x") and not Option("", "str").accepts(3)
    auto = Option("auto", "int", low=1, keywords=("auto",))
    assert auto.accepts("auto") and auto.accepts(4) and not auto.accepts("Auto") and not auto.accepts(0)
    assert auto.requirement() == "an integer >= 1 or 'auto'"
    widths = Option([1, 2, 3], "ints", low=1, high=256, length=(3, 3))
    assert widths.accepts([8, 8, 8]) and widths.accepts((8, 8, 8))
    for value in ([8, 8], [8, 8, 8, 8], [8, 8, 0], [8, 8, 8.0], [8, True, 8], "888", 8):
        assert not widths.accepts(value), value
    assert widths.requirement() == "a list of 3 integers in [1, 256]"
    levels = Option([0.5], "floats", low=0, high=1, low_open=True, length=(1, 8))
    assert levels.accepts([1, 0.5]) and not levels.accepts([]) and not levels.accepts([0.5, 0])
    assert levels.requirement() == "a list of 1 to 8 numbers in (0, 1]"


def test_a_malformed_declaration_is_refused():
    with pytest.raises(ValueError):
        Option(1, "integer")
    with pytest.raises(ValueError):
        Option("a", "choice")
    with pytest.raises(ValueError):
        Option(1, "int", choices=(1, 2))


def test_option_defaults_are_derived_and_cannot_be_declared_apart():
    class Declared(Codec):
        name, codec_id, rate_param, default_rates, rate_range = "t", 250, "q", (1,), (1, 2)
        option_specs: ClassVar = {"level": Option(2, "int", low=0, high=3)}

        def encode_payload(self, image, rate, *, device, seed):
            raise NotImplementedError

        def decode_payload(self, params, payload, width, height, *, device):
            raise NotImplementedError

    assert Declared.option_defaults == {"level": 2}
    assert Declared(level=3).options == {"level": 3}
    with pytest.raises(ConfigError, match=r"^codec 't': option level must be an integer in \[0, 3\], got 4$"):
        Declared(level=4)
    with pytest.raises(TypeError, match="option_specs"):
        class Apart(Declared):  # noqa: F841
            option_defaults: ClassVar = {"level": 1}


# -- every registered codec ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_codec_declares_every_option_and_its_defaults_pass(name):
    cls = CODECS[name]
    assert set(cls.option_specs) == set(cls.option_defaults)
    for key, spec in cls.option_specs.items():
        assert isinstance(spec, Option), key
        assert spec.help, f"{name}.{key} has no help text"
        assert spec.accepts(spec.default), f"{name}.{key}: default {spec.default!r} fails {spec.requirement()}"
        assert cls.option_defaults[key] == spec.default
    if cls.availability() is None:
        codec = cls(**cls.option_defaults)  # the defaults, given explicitly, pass the codec's own checks
        assert codec.options == cls.option_defaults
        for rate in cls.default_rates:
            codec.check_rate(rate)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_integer_rate_knobs_refuse_fractions(name):
    cls = CODECS[name]
    if name == "misc":
        pytest.skip("misc's rate is its base codec's (tests/test_misc.py checks the delegation)")
    codec = cls.__new__(cls)  # check_rate needs no options, nor the codec's libraries
    lo, hi = cls.rate_range
    whole = float(int(lo) + 1)
    if cls.integer_rates:
        assert codec.check_rate(whole) == whole  # 12.0 is a whole number
        with pytest.raises(ConfigError, match=f"^codec '{re.escape(name)}': {cls.rate_param} must be a whole number, got"):
            codec.check_rate(whole + 0.5)
        assert all(float(r).is_integer() for r in cls.default_rates)
    else:
        fraction = lo + (hi - lo) * 0.37  # not a whole number for any of the ranges
        assert not float(fraction).is_integer() and codec.check_rate(fraction) == fraction
    with pytest.raises(ConfigError):
        codec.check_rate(True)


def test_integer_rate_knobs_are_the_expected_ones():
    integer = {name for name, cls in CODECS.items() if cls.integer_rates}
    assert integer == {"jpeg", "webp", "avif", "hevc-intra", "av1-intra", "x264", "x265", "av1", "nerv",
                       "supermask-nerv", "bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018",
                       "cheng2020-anchor", "cheng2020-attn", "compressai", "glc",
                       *(f"{arch}+adapter" for arch in ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean",
                                                        "mbt2018", "cheng2020-anchor", "cheng2020-attn"))}


def test_torch_free_copies_of_model_constants_agree():
    pytest.importorskip("torch")
    from ulbc.codecs import nerv, overfitted
    from ulbc.nerv.arch import HEAD_KERNELS
    from ulbc.nerv.model import WEIGHT_INITS
    from ulbc.nerv.stream import MAX_LEVELS
    from ulbc.overfit.model import COOLCHIC_PRESETS

    assert set(overfitted.COOLCHIC_PRESET_NAMES) == set(COOLCHIC_PRESETS)
    assert tuple(nerv.WEIGHT_INIT_NAMES) == tuple(WEIGHT_INITS)
    assert tuple(nerv.HEAD_KERNEL_SIZES) == tuple(HEAD_KERNELS)
    assert nerv.MAX_DENSITY_LEVELS == MAX_LEVELS


# -- the declared ranges are the libraries' own ----------------------------------------------------
PILLOW_CODECS = ("jpeg", "webp", "avif", "jpegxl")


@pytest.mark.parametrize("name", PILLOW_CODECS)
def test_pillow_codecs_encode_at_every_declared_bound_and_choice(name):
    cls = CODECS[name]
    if cls.availability():
        pytest.skip(cls.availability())
    image = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    rate = cls.default_rates[len(cls.default_rates) // 2]
    for key, spec in cls.option_specs.items():
        values = list(spec.choices) if spec.kind == "choice" else [v for v in (spec.low, spec.high) if v is not None]
        if spec.kind == "bool":
            values = [True, False]
        for value in values:
            get_codec(name, **{key: value}).encode(image, rate)  # the library takes it
        if spec.kind == "int":
            for outside in (spec.low - 1, *(() if spec.high is None else (spec.high + 1,))):
                with pytest.raises(ConfigError, match=f"option {key} must be"):
                    get_codec(name, **{key: outside})


def test_x26x_preset_and_av1_speed_are_declared():
    for name in ("hevc-intra", "x264", "x265"):
        with pytest.raises(ConfigError, match=f"^codec '{name}': option preset must be one of ultrafast, .*placebo, "
                                              "got 'warp-speed'$"):
            get_codec(name, preset="warp-speed")
    for name in ("av1-intra", "av1"):
        with pytest.raises(ConfigError, match=r"option cpu_used must be an integer in \[0, 8\], got 9$"):
            get_codec(name, cpu_used=9)
    with pytest.raises(ConfigError, match=r"option keyint must be an integer in \[1, 10000\], got True$"):
        get_codec("x264", keyint=True)


# -- the reported defects --------------------------------------------------------------------------
def test_jpeg_subsampling_banana_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^codec 'jpeg': option subsampling must be one of 4:4:4, 4:2:2, 4:2:0, "
                                          r"got 'banana'$"):
        get_codec("jpeg", subsampling="banana")


@pytest.mark.parametrize("value", ["banana", True, 2.5, 7])
def test_webp_method_must_be_an_integer_0_to_6(value):
    with pytest.raises(ConfigError, match=r"^codec 'webp': option method must be an integer in \[0, 6\], got "):
        get_codec("webp", method=value)


def test_bool_is_not_an_int_and_int_is_not_a_bool():
    with pytest.raises(ConfigError, match="option method must be an integer"):
        get_codec("webp", method=True)
    with pytest.raises(ConfigError, match="option optimize must be true or false, got 1$"):
        get_codec("jpeg", optimize=1)


def test_cli_encode_with_a_bad_option_is_one_line(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src)
    proc = ulbc("encode", src, tmp_path / "o.ulb", "--codec", "jpeg", "--option", "subsampling=banana")
    assert_one_line_error(proc, "codec 'jpeg': option subsampling must be one of 4:4:4, 4:2:2, 4:2:0, got 'banana'")
    assert not (tmp_path / "o.ulb").exists()
    proc = ulbc("encode", src, tmp_path / "o.ulb", "--codec", "webp", "--option", "method=banana")
    assert_one_line_error(proc, "option method must be an integer in [0, 6], got 'banana'")
    proc = ulbc("encode", src, tmp_path / "o.ulb", "--codec", "jpeg", "--rate", "12.5")
    assert_one_line_error(proc, "quality must be a whole number, got 12.5")
    proc = ulbc("encode", src, tmp_path / "o.ulb", "--codec", "jpeg", "--options", "[1, 2]")
    assert_one_line_error(proc, "--options: expected a JSON object")
    assert not (tmp_path / "o.ulb").exists()


@pytest.mark.parametrize("method, fragment", [
    ("jpeg: {options: {subsampling: banana}}",
     "methods.jpeg: codec 'jpeg': option subsampling must be one of 4:4:4, 4:2:2, 4:2:0, got 'banana'"),
    ("webp: {options: {method: banana}}", "methods.webp: codec 'webp': option method must be an integer in [0, 6]"),
    ("jpeg: {rates: [12.2, 12.7]}", "methods.jpeg.rates: codec 'jpeg': quality must be a whole number, got 12.2"),
])
def test_check_config_refuses_bad_options_and_fractional_rates(tmp_path, method, fragment):
    study = tmp_path / "study.yaml"
    anchor = method.split(":")[0]
    study.write_text(f"datasets: {{d: {{source: samples}}}}\nmethods:\n  {method}\nanchor: {anchor}\n")
    assert_one_line_error(ulbc("check-config", study), fragment)


def test_codecs_verbose_shows_each_options_range_and_default():
    out = ulbc("codecs", "--verbose")
    assert out.returncode == 0, out.stderr
    assert 'subsampling = "4:2:0": one of 4:4:4, 4:2:2, 4:2:0' in out.stdout
    assert "method = 6: an integer in [0, 6]" in out.stdout
    assert "rate: quality, whole numbers in [1, 100]" in out.stdout
    rows = {r["name"]: r for r in json.loads(ulbc("codecs", "--json").stdout)}
    assert rows["webp"]["options"] == {"method": 6}  # still the defaults dict
    assert rows["webp"]["option_specs"]["method"]["accepts"] == "an integer in [0, 6]"
    assert rows["jpeg"]["integer_rates"] is True and rows["jpegxl"]["integer_rates"] is False


@pytest.mark.parametrize("name", ["coolchic", "lottery", "supermask-nerv"])
def test_without_torch_options_are_still_checked_and_nothing_imports_it(monkeypatch, name):
    cls = CODECS[name]
    monkeypatch.setattr(cls, "availability", classmethod(lambda c: "needs torch and constriction (test)"))

    def needs_torch(*args, **kwargs):
        raise AssertionError("a torch-side check ran without torch")

    monkeypatch.setattr(cls, "architecture", needs_torch, raising=False)
    monkeypatch.setattr(cls, "density_codes", needs_torch, raising=False)
    from ulbc.config import plan_methods, validate_with_schema

    config = validate_with_schema({"datasets": {"d": {"source": "samples"}}, "methods": {name: {}}, "anchor": name})
    with pytest.raises(ConfigError, match=rf"^methods\.{name}: codec '{name}' is not available here: needs torch"):
        plan_methods(config)
    config["methods"][name]["options"] = {"iterations": 0}
    with pytest.raises(ConfigError, match=rf"^methods\.{name}: codec '{name}': option iterations must be an integer >= 1"):
        plan_methods(config)


def test_exponent_numbers_that_yaml_reads_as_text_are_numbers_for_float_options(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as a string, as for rates.
    study = tmp_path / "study.yaml"
    study.write_text("datasets: {d: {source: samples}}\nmethods:\n  nerv: {options: {lr: 1e-3}}\n"
                     "  jpeg: {}\nanchor: jpeg\n")
    from ulbc.config import load_config

    config = load_config(study)
    assert config["methods"]["nerv"]["options"]["lr"] == "1e-3"
    assert CODECS["nerv"](lr="1e-3").options["lr"] == 1e-3
    assert Option([0.5], "floats", low=0, high=1).normalise(["5e-1", 0.25]) == [0.5, 0.25]
    for text in ("fast", "nan", "inf"):
        with pytest.raises(ConfigError, match="option lr must be a number"):
            CODECS["nerv"](lr=text)
    with pytest.raises(ConfigError, match="option iterations must be an integer"):
        CODECS["nerv"](iterations="1e3")  # integers are not read from text
