"""The built wheel holds every file the package reads at run time, and works installed from it (not editable):
configs, prompts, bundled corpora. An editable install reads them from the source tree, so only this test sees a
file missing from the package data."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import llm_ner, sys
assert llm_ner.__file__.startswith(sys.argv[1]), llm_ner.__file__  # the wheel's copy, not the source tree
from llm_ner.baselines.prompt import load_prompt
from llm_ner.config import load_config
from llm_ner.data import load_corpus
assert load_prompt("ner_v1")["version"]
for name in ("quickstart", "conll2003", "wnut17", "pii", "conll2003_ab", "multinerd"):
    load_config(name)
for corpus in ("conll2003", "wnut17"):
    for split in ("train", "valid", "test"):
        assert load_corpus(f"{corpus}:{split}", limit=2)
print("ok")
"""


def test_wheel_holds_and_serves_every_runtime_file(tmp_path):
    src = tmp_path / "src_copy"  # build from a copy: no build/ or egg-info left in the checkout
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True)
    wheel = next((tmp_path / "dist").glob("llm_ner-*.whl"))
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("llm_ner/")}
    pkg = ROOT / "src" / "llm_ner"
    needed = {"llm_ner/" + p.relative_to(pkg).as_posix() for p in pkg.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert needed <= in_wheel, f"missing from the wheel: {sorted(needed - in_wheel)}"

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
                    str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", CHECK, str(site)], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
