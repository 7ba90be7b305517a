"""The README's commands are real: every `llm-ner ...` line of its shell blocks names a command that exists and only
options that command declares (parsed by the CLI itself, offline, in seconds); the set-up commands are the ones
.ci/run runs. The commands that train or download are run by .ci/run (command 2) and the fresh-clone check (command
1), not here."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from llm_ner.cli import app

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """Every `llm-ner` invocation in the README's ```bash blocks (continuation lines joined, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip(), comments=True)
                if words[:1] == ["llm-ner"]:
                    out.append(words[1:])
    return out


COMMANDS = readme_commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 15, COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a[:2]) for a in COMMANDS])
def test_a_readme_command_parses(argv):
    group = typer.main.get_command(app)
    cmd, args = group, list(argv)
    while hasattr(cmd, "commands"):  # a group (typer's own, not always a click.Group subclass)
        assert args and args[0] in cmd.commands, f"llm-ner {' '.join(argv)}: no command {args[:1]}"
        cmd, args = cmd.commands[args[0]], args[1:]
    ctx = cmd.make_context(cmd.name, args, resilient_parsing=False)  # raises on an unknown option or a missing one
    # every option the README gives is one the command read from this command line (issue 43: the assertion here
    # was `ctx.params is not None`, true of any parse)
    from click.core import ParameterSource

    given = {o for p in cmd.params if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
             for o in (*p.opts, *p.secondary_opts)}
    named = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert named <= given, (argv, named - given)


def test_the_setup_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.findall(r"```bash\n\s*(pip install -q -r requirements-test\.txt.*?)\n", README)
    assert len(test_cmd) == 1 and test_cmd[0].strip() in ci


def test_the_readme_python_runs(tiny_ner_dir):
    """The README's Python block, on a tiny model in place of the quickstart's (the call and its shapes are real)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    checked = 0
    for code in blocks:
        scope: dict = {}
        exec(compile(code.replace("runs/quickstart/model", str(tiny_ner_dir)), "README.md", "exec"), scope)
        if "preds" in scope:
            assert len(scope["preds"]) == 2 and isinstance(scope["preds"].to("pipeline"), list)
            checked += 1
    assert checked, "no README Python block makes `preds`: the check above ran on nothing"  # issue 43: vacuous


def test_the_results_table_is_rendered_from_the_run_records():
    """README's first results table is scripts/results_table.py's output over docs/runs: a number changes with its
    records, never by hand."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py")], capture_output=True,
                         text=True, check=True).stdout
    assert out.count("\n") >= 9 and out in (ROOT / "README.md").read_text()
