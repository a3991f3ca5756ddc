"""Which code made a row: per-codec code digests, and the aggregation's refusal to mix them."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest

from ulbc import provenance
from ulbc.aggregate import aggregate_shards, check_code_versions, version_mix
from ulbc.errors import InputError
from ulbc.schema import METRIC_ROW_SCHEMA

from test_aggregate import make_row, write_shard


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """code_digest computed over a private copy of the ulbc sources, which a test may edit."""
    copy = tmp_path / "ulbc"
    shutil.copytree(provenance._PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    monkeypatch.setattr(provenance, "_PACKAGE_ROOT", copy)

    def digests(kind=provenance.code_digest):
        provenance._source_files.cache_clear()
        provenance.code_digest.cache_clear()
        provenance.encode_digest.cache_clear()
        return {name: kind(name) for name in ("jpeg", "webp", "hevc-intra", "lottery", "nerv")}

    yield copy, digests
    provenance._source_files.cache_clear()
    provenance.code_digest.cache_clear()
    provenance.encode_digest.cache_clear()


def touch(path):
    path.write_text(path.read_text() + "\n# edited\n")


def test_an_edit_changes_exactly_the_digests_of_the_codecs_whose_code_it_is(package_copy):
    copy, digests = package_copy
    first = digests()
    assert digests() == first  # deterministic
    assert len(set(first.values())) == len(first)
    touch(copy / "codecs" / "ffmpeg_codecs.py")
    second = digests()
    assert [n for n in first if first[n] != second[n]] == ["hevc-intra"]
    touch(copy / "overfit" / "arm.py")  # the overfitted codecs' entropy coding; NeRV does not import it
    third = digests()
    assert [n for n in first if second[n] != third[n]] == ["lottery"]
    touch(copy / "codecs" / "pillow_codecs.py")  # jpeg and webp share a module
    fourth = digests()
    assert [n for n in first if third[n] != fourth[n]] == ["jpeg", "webp"]
    touch(copy / "metrics" / "fidelity.py")  # shared by every row
    fifth = digests()
    assert all(fourth[n] != fifth[n] for n in first)


def test_a_metric_edit_re_measures_without_re_encoding(package_copy):
    copy, digests = package_copy
    rows, bitstreams = digests(), digests(provenance.encode_digest)
    assert all(rows[n] != bitstreams[n] for n in rows)  # two different fingerprints
    touch(copy / "metrics" / "base.py")
    assert all(digests()[n] != rows[n] for n in rows)
    assert digests(provenance.encode_digest) == bitstreams
    touch(copy / "codecs" / "ffmpeg_codecs.py")
    changed = digests(provenance.encode_digest)
    assert [n for n in rows if changed[n] != bitstreams[n]] == ["hevc-intra"]


def test_a_registry_does_not_make_one_codec_depend_on_the_others():
    files = {p.name for p in provenance._source_files(("ulbc.codecs.pillow_codecs", "ulbc.runner", "ulbc.metrics"))}
    assert {"pillow_codecs.py", "base.py", "runner.py", "fidelity.py", "bitstream.py"} <= files
    assert not files & {"ffmpeg_codecs.py", "overfitted.py", "nerv.py", "video_ffmpeg.py"}


def table(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=METRIC_ROW_SCHEMA)


def test_rows_of_the_current_code_pass():
    rows = [make_row(item=f"im{i}") for i in range(3)] + [make_row(method="w", codec="webp")]
    assert check_code_versions(table(rows)) is None


def test_one_method_from_two_code_versions_is_refused_unless_allowed():
    rows = [make_row(item="a"), make_row(item="b", code_digest="0123456789abcdef", git_commit="old")]
    with pytest.raises(InputError, match=r"method 'jpeg' has rows from 2 code versions .*old"):
        check_code_versions(table(rows))
    message = check_code_versions(table(rows), allow_mixed=True)
    assert "method 'jpeg' has rows from 2 code versions" in message


def test_rows_of_older_code_and_other_library_versions_are_refused():
    with pytest.raises(InputError, match="rows come from other code .*current"):
        check_code_versions(table([make_row(code_digest="0123456789abcdef")]))
    with pytest.raises(InputError, match="2 codec versions"):
        check_code_versions(table([make_row(item="a"), make_row(item="b", codec_version="2.0")]))


def test_a_codec_unknown_here_is_checked_for_consistency_only():
    rows = [make_row(codec="someone-elses-codec", code_digest="aaaa", item=str(i)) for i in range(2)]
    assert check_code_versions(table(rows)) is None


def test_aggregation_refuses_or_records_the_mix(tmp_path):
    good = write_shard(tmp_path / "a.parquet", [make_row(item="a")])
    stale = write_shard(tmp_path / "b.parquet", [make_row(item="b", code_digest="0123456789abcdef")])
    out = tmp_path / "metrics.parquet"
    with pytest.raises(InputError, match="results mix code versions.*allow_mixed_versions"):
        aggregate_shards([good, stale], out, engine="pyarrow")
    assert not out.exists()
    aggregate_shards([good, stale], out, engine="pyarrow", allow_mixed_versions=True)
    assert "2 code versions" in version_mix(out)
    aggregate_shards([good], out, engine="pyarrow")
    assert version_mix(out) is None


# -- reproducible maths ------------------------------------------------------------------------------------
def test_importing_ulbc_puts_mkl_in_its_reproducible_mode_unless_the_user_chose():
    import os
    import subprocess
    import sys

    show = "import os, ulbc; print(os.environ['MKL_CBWR'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    default = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    chosen = subprocess.run([sys.executable, "-c", show], env={**env, "MKL_CBWR": "COMPATIBLE"},
                            capture_output=True, text=True, check=True)
    assert (default.stdout.strip(), chosen.stdout.strip()) == ("AUTO", "COMPATIBLE")
