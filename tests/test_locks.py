"""Every environment the tests or the docs build comes from a lock in the repo (issue 43): an unlocked `pip install
label-studio==1.23.2` resolved sentry-sdk 3.0 on a fresh machine and Label Studio died at start, while every machine
with a cached venv stayed green. These checks read files; building the venv is test_label_studio's."""

import ast
import re
from pathlib import Path

import venvs

ROOT = Path(__file__).resolve().parent.parent
REQ = re.compile(r"^([A-Za-z0-9_.\-\[\],]+)==([^\s;\\]+)")


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_test_builds_an_environment_but_from_a_lock():
    """A call that makes a venv or runs `pip install` lives in tests/venvs.py (which installs a lock with hashes);
    elsewhere only `pip install --no-deps` of the project's own wheel is allowed (test_wheel: nothing resolved)."""
    bad = []
    for f in sorted((ROOT / "tests").glob("*.py")):
        if f.name == "venvs.py":
            continue
        for call in (n for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Call)):
            words = _strings(call)
            makes_venv = "venv" in words and "-m" in words
            pip_install = "install" in words and any("pip" in w for w in words)
            if makes_venv or (pip_install and "--no-deps" not in words):
                bad.append(f"{f.name}:{call.lineno}")
    assert not bad, f"environments built outside tests/venvs.py (use venvs.locked_venv): {bad}"


def test_venvs_install_the_lock_with_hashes_and_key_their_cache_by_it(tmp_path, monkeypatch):
    cmd = venvs.install_command(tmp_path / "v", "label-studio")
    assert "--require-hashes" in cmd and cmd[cmd.index("-r") + 1] == str(ROOT / "locks" / "label-studio.txt")
    monkeypatch.setenv("LLM_NER_CACHE", str(tmp_path))
    monkeypatch.setattr(venvs, "LOCKS", tmp_path)
    (tmp_path / "x.txt").write_text("a==1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    first = venvs.venv_dir("x")
    (tmp_path / "x.txt").write_text("a==2 \\\n    --hash=sha256:" + "1" * 64 + "\n")
    assert venvs.venv_dir("x") != first and first.parent == tmp_path / "test-venvs"  # a changed lock: a new venv


def test_every_lock_pins_every_package_with_a_hash():
    locks = sorted((ROOT / "locks").glob("*.txt"))
    assert locks and {p.stem for p in locks} == {p.stem for p in (ROOT / "locks").glob("*.in")}
    for lock in locks:
        entries = re.split(r"\n(?=\S)", lock.read_text())  # a requirement with its continuation lines
        reqs = [e for e in entries if e.strip() and not e.startswith("#")]
        assert reqs, lock
        for e in reqs:
            assert REQ.match(e) and "--hash=sha256:" in e, f"{lock.name}: not pinned with a hash: {e[:80]!r}"
    pins = dict(REQ.match(e).groups() for e in re.split(r"\n(?=\S)", (ROOT / "locks" / "label-studio.txt")
                                                          .read_text()) if REQ.match(e))
    assert pins["label-studio"] == "1.23.2" and int(pins["sentry-sdk"].split(".")[0]) < 3


def test_the_docs_install_label_studio_from_the_same_lock():
    doc = (ROOT / "docs" / "annotation.md").read_text()
    assert "pip install --require-hashes -r locks/label-studio.txt" in doc
    assert not re.search(r"pip install [^`\n]*label-studio==", doc)
