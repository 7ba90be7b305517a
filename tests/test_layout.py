"""The folder layout shows the pipeline, and imports only run downwards: a module imports only modules of its own
stage or of stages before it in STAGES (a stage is a top-level folder, or one of the few core modules); inside a
stage, imports form no circle. Lazy imports inside functions count too; `if TYPE_CHECKING:` imports are annotations,
not imports. Also: docs/layout.md names every module; cli/ declares shared options once; output shapes are built only
in inference/outputs.py; every test module that runs a model is marked for CI's second pass."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "llm_ner"

# Bottom to top: data -> labels -> model -> run dirs -> inference -> evaluation -> training -> baselines / comparison ->
# report -> serving -> cli. Inference and evaluation sit below training, because training selects its best model by
# predicting and scoring the dev set and ends with the test step.
STAGES = [
    "errors", "fsutil", "device", "config",  # core: every stage may use them
    "data", "labels",
    "modeling", "rundir", "inference", "evaluation", "training",
    "baselines", "active", "comparison", "report",
    "serving", "cli", "__init__",
]


def stage(module: str) -> str:
    return module.split(".")[0]


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


def graph() -> dict[str, set[str]]:
    """module -> the llm_ner modules it imports (`from .data import x` counts as data, the package)."""
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    out = {}
    for me, path in modules.items():
        deps = set()
        for dep in imports(path):
            while dep not in modules and "." in dep:  # `from .x import name`: name is not a module
                dep = dep.rsplit(".", 1)[0]
            if dep in modules and dep != me:
                deps.add(dep)
        out[me] = deps
    return out


def test_every_module_is_in_a_stage_folder():
    modules = {module_name(p) for p in PKG.rglob("*.py")}
    assert {stage(m) for m in modules} == set(STAGES), f"stages: {sorted({stage(m) for m in modules} ^ set(STAGES))}"
    core = STAGES[:4] + ["labels", "rundir", "cli", "__init__"]
    flat = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in core)
    assert not flat, f"put these in a stage folder: {flat}"


def test_imports_run_only_downwards():
    rank = {s: i for i, s in enumerate(STAGES)}
    upward = [f"{me} imports {dep}" for me, deps in graph().items() for dep in deps
              if rank[stage(dep)] > rank[stage(me)]]
    assert not upward, upward


def test_no_import_circle():
    g, state, circles = graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(g[m]):
            if state.get(d) == "open":
                circles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not circles, circles


def test_the_checker_sees_lazy_imports_and_skips_annotations(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text(
        "from typing import TYPE_CHECKING\nfrom ..train import x\nif TYPE_CHECKING:\n    from ..predict import y\n"
        "def f():\n    from .. import cli\n    from . import sibling\n")
    assert imports(tmp_path / "sub" / "m.py", tmp_path) == {"train", "cli", "sub.sibling"}


def readme_tree(readme: str) -> set[str]:
    """The files docs/layout.md's tree names, as paths: `  data/` opens a folder, `    corpus.py` is in it."""
    block = readme.split("# Layout", 1)[1].split("```", 2)[1]
    names, folder = set(), ""
    for line in block.splitlines():
        indent, head = len(line) - len(line.lstrip()), line.strip().split("  ")[0]
        if indent == 2:
            folder = head if head.endswith("/") else ""
        if indent in (2, 4) and head:
            names |= {(folder if indent == 4 else "") + n.strip() for n in head.split(",")}
    return names


def test_readme_layout_names_every_module():
    named = readme_tree((ROOT / "docs" / "layout.md").read_text())
    missing = [p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
               if p.name != "__init__.py" and p.relative_to(PKG).as_posix() not in named]
    assert not missing, f"docs/layout.md does not mention {missing}"


def test_scripts_and_benchmarks_import_names_that_exist():
    """Scripts and benchmarks run outside the suite: every `from llm_ner... import name` in them (lazy ones too) must
    name a module or attribute that exists (a move of report.study_table broke scripts/study.py once)."""
    import importlib

    missing = []
    for path in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "llm_ner":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and importlib.util.find_spec(
                            f"{node.module}.{alias.name}") is None:
                        missing.append(f"{path.name}: {node.module}.{alias.name}")
    assert not missing, missing


def test_cli_declares_shared_options_once():
    """cli/: the options every command shares are declared in options.py only; the other modules use its types."""
    cli = PKG / "cli"
    assert (cli / "options.py").is_file()
    for f in cli.glob("*.py"):
        if f.name == "options.py":
            continue
        text = f.read_text()
        for flag in ('"--set"', '"--model"', '"--precision"', '"--review"', '"--verbose"', "batch_size: Annotated"):
            assert flag not in text, f"{f.name} declares {flag} itself: use cli/options.py's type"
        assert "from .options import" in text or f.name in ("__init__.py", "__main__.py"), f.name


def test_output_shapes_are_built_only_in_the_registry():
    """An entity's output shape (record, pipeline dict, Label Studio region, spaCy span) is written in
    inference/outputs.py (OUTPUTS) only: every entry point shapes its output through `Predictions.to`."""
    marks = ('"entity_group"', '"needs_review":', "entity_dicts(", "label_studio_prediction(", "to_doc(",
             "pipeline_dicts(")
    allowed = {"inference/outputs.py", "data/annotation.py"}  # the registry, and the Label Studio record it wraps
    bad = [(p.relative_to(PKG).as_posix(), m) for p in PKG.rglob("*.py") for m in marks
           if p.relative_to(PKG).as_posix() not in allowed and m in p.read_text()]
    assert not bad, bad


RUNS_A_MODEL = ("tiny_ner_dir", "tiny_llama", "tiny_tokenizer", "make_llama", "NERModel", "start_server",
                "from_backbone", "LLMForTokenClassification", "import torch")


def test_every_test_that_runs_a_model_is_in_the_second_pass():
    """.ci/run reruns `-m outputs` with the CPU kernels forced down: a module that runs a model must say so with its
    marker, so no test that compares model outputs can be left out of that pass by a forgotten list entry."""
    unmarked = [p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if p.name != "test_layout.py"
                if any(w in p.read_text() for w in RUNS_A_MODEL) and "pytest.mark.outputs" not in p.read_text()]
    assert not unmarked, f"these run a model but lack `pytestmark = pytest.mark.outputs`: {unmarked}"


def test_no_code_outside_inference_calls_a_private_method_of_nermodel():
    """The prediction pass has public steps (NERModel.run / decode / sequence_scores): evaluation, calibration,
    selection and serving compose those, never NERModel's private helpers."""
    tree = ast.parse((PKG / "inference" / "engine.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NERModel")
    private = {f.name for f in cls.body if isinstance(f, ast.FunctionDef) and f.name.startswith("_")
               and not f.name.startswith("__")}
    assert private  # the check sees them
    bad = [(p.relative_to(PKG).as_posix(), node.attr) for p in PKG.rglob("*.py")
           if p.relative_to(PKG).parts[0] != "inference"
           for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Attribute) and node.attr in private]
    assert not bad, bad


def test_no_function_is_longer_than_a_screen():
    """A function you can read in one screen: none in src/ is over 60 lines (a nested function counts in its
    parent's lines too)."""
    long = [(p.relative_to(PKG).as_posix(), n.name, n.end_lineno - n.lineno + 1) for p in PKG.rglob("*.py")
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long


def test_checking_a_model_dir_imports_no_torch(tmp_path):
    """Issue 45: `read_model_config` (what serve, batch-predict and train --init check a model dir with before
    anything loads) lives with the model dir's files, torch-free: a CLI check costs no torch import."""
    import json
    import subprocess
    import sys

    (tmp_path / "llm_ner_config.json").write_text(json.dumps({"format_version": 2, "labels": {"types": ["PER"]}}))
    code = ("import sys; from llm_ner.modeling.persistence import read_model_config; "
            f"read_model_config({str(tmp_path)!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
