import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach for the hub
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: two workers on 2 cores, one thread each (and their
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses): two torch pools of 2 threads starve each other


# A test module that runs a model (tags, spans, scores, losses) says so: `pytestmark = pytest.mark.outputs`. .ci/run
# runs those a second time with the CPU kernels forced down (`pytest -m outputs`), as another CPU rounds, so a float
# compared too exactly fails in CI rather than on a user's machine. test_layout checks that every module using a model
# fixture, a tiny model or torch carries the marker (no hand-kept list to forget).


def pytest_configure(config):
    config.addinivalue_line("markers", "optional(reason): may skip under CI=true (needs what the README does not "
                                       "promise, e.g. a GPU)")
    config.addinivalue_line("markers", "outputs: compares what a model computed (run again on other CPU kernels)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure: .ci/run installs everything the README promises (the test extra, the
    weight packages, Chromium, root for tmpfs), so a skip there means a broken install or set-up, not a choice.
    Tests marked `optional` may still skip."""
    outcome = yield
    rep = outcome.get_result()
    optional = item.get_closest_marker("optional")
    if os.environ.get("CI") and rep.skipped and not hasattr(rep, "wasxfail") and not optional:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome, rep.longrepr = "failed", f"skipped under CI=true (a promised part is missing): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped while it is collected (a module-level importorskip)."""
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") and rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome, rep.longrepr = "failed", f"{collector.nodeid} skipped under CI=true: {reason}"


@pytest.fixture(autouse=True)
def _llm_ner_logs_reach_caplog():
    """The CLI (run in-process by CliRunner) gives the llm_ner logger its own stderr handler and stops propagation;
    undo that after each test, so a later test's caplog still sees llm_ner's warnings whatever ran before it."""
    yield
    import logging

    ours = logging.getLogger("llm_ner")
    ours.handlers.clear()
    ours.propagate = True


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny import make_llama

    return make_llama(tmp_path_factory.mktemp("tiny_llama"), layers=4)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama):
    from llm_ner.inference.engine import load_tokenizer

    return load_tokenizer(str(tiny_llama))


@pytest.fixture(scope="session")
def tiny_ner_dir(tiny_llama, tiny_tokenizer, tmp_path_factory) -> Path:
    """A saved, servable model dir: frozen tiny backbone, head weights scaled up so it predicts some entities."""
    import torch
    from tiny import ner_config

    from llm_ner.labels import LabelSet
    from llm_ner.modeling.model import LLMForTokenClassification

    torch.manual_seed(0)
    model = LLMForTokenClassification.from_backbone(
        ner_config(LabelSet.from_types(["PER", "LOC", "ORG"]), str(tiny_llama), mode="frozen"))
    with torch.no_grad():
        model.classifier.weight.normal_(std=2.0)
    d = tmp_path_factory.mktemp("served") / "model"
    model.save_pretrained(d, tokenizer=tiny_tokenizer)
    return d


@pytest.fixture(scope="session")
def ray_session():
    """One Ray runtime for every batch-prediction test (ray_predict leaves a Ray it did not start running): starting
    Ray costs ~15 s a time on 2 cores."""
    ray = pytest.importorskip("ray")
    ray.init(include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
