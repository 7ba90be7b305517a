"""The prompted baseline end to end against a real local OpenAI-compatible server (started and stopped by the
command) serving the real SmolLM2-135M-Instruct, on a few CoNLL-2003 test sentences."""

import json
import socket

import pytest

from llm_ner.baselines import prompt as pb
from llm_ner.config import load_config

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prompt_baseline_against_real_local_server(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    port = free_port()
    run_cfg = load_config(None, {"data.max_train_sentences": 200, "data.dev": None})
    pcfg = pb.PromptConfig(k_shot=1, max_tokens=48, local_port=port, cache_dir=str(tmp_path / "cache"))
    res = pb.run(run_cfg, pcfg, tmp_path / "out", max_sentences=3, progress=False)
    stats = json.loads((tmp_path / "out" / "prompt_stats.json").read_text())
    assert stats["counts"]["requests"] == 3 and stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
    assert stats["latency_p50"] > 0
    assert res["metrics"]["sentences"] == 3 and (tmp_path / "out" / "test_predictions.conll").is_file()
    with socket.socket() as s:  # the server we started is gone
        assert s.connect_ex(("127.0.0.1", port)) != 0
    # a re-run is answered from the cache: same predictions, no server needed
    pcfg2 = pb.PromptConfig(k_shot=1, max_tokens=48, local_port=port, cache_dir=str(tmp_path / "cache"),
                            local_server="never", model=pcfg.model)
    res2 = pb.run(run_cfg, pcfg2, tmp_path / "out2", max_sentences=3, progress=False)
    assert res2["stats"]["counts"]["cached"] == 3 and res2["metrics"] == res["metrics"]
