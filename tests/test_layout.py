"""The folder layout shows the pipeline, and imports only run downwards: a module imports only modules before it in
LAYERS (lazy imports inside functions count too; `if TYPE_CHECKING:` imports are annotations, not imports). Also:
the README's layout section names every module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "llm_ner"

# Bottom to top. Prediction (predict) and scoring (evaluate) sit below train, because training selects its best model
# by predicting and scoring the dev set and ends with the test step.
LAYERS = [
    "errors", "fsutil", "device", "config", "align", "data.schemes", "data.words", "data.annotation", "data.corpus",
    "data.formats", "data",
    "labels", "rundir", "crf", "backbones", "model", "batching", "quantize", "predict", "evaluate", "calibrate",
    "analyze", "train",
    "baselines.encoder", "baselines.prompt", "baselines", "compare", "systems", "report",
    "serve", "spacy_component", "batch", "cli", "__init__",
]


def module_name(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, pkg: Path = PKG) -> set[str]:
    """The llm_ner modules a file imports, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    package = list(path.relative_to(pkg).parent.parts)  # what `from .` means in this file
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:
                found.update(".".join(base + [a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm_ner."):
            found.add(node.module.removeprefix("llm_ner."))
    return {m for m in found if m}


def test_every_module_has_a_layer():
    modules = {module_name(p) for p in PKG.rglob("*.py")}
    assert modules == set(LAYERS), f"add to LAYERS: {modules - set(LAYERS)}; gone: {set(LAYERS) - modules}"


def test_imports_run_only_downwards():
    rank = {m: i for i, m in enumerate(LAYERS)}
    upward = []
    for path in PKG.rglob("*.py"):
        me = module_name(path)
        for dep in imports(path):
            dep = dep if dep in rank else dep.rsplit(".", 1)[0]  # `from .data import x` -> data
            if rank[dep] >= rank[me] and not (me == "data" and dep.startswith("data.")) and not (
                    me == "baselines" and dep.startswith("baselines.")):
                upward.append(f"{me} imports {dep}")
    assert not upward, upward


def test_the_checker_sees_lazy_imports_and_skips_annotations(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text(
        "from typing import TYPE_CHECKING\nfrom ..train import x\nif TYPE_CHECKING:\n    from ..predict import y\n"
        "def f():\n    from .. import cli\n    from . import sibling\n")
    assert imports(tmp_path / "sub" / "m.py", tmp_path) == {"train", "cli", "sub.sibling"}


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = [p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
               if p.name != "__init__.py" and p.relative_to(PKG).as_posix() not in section]
    assert not missing, f"README layout section does not mention {missing}"
