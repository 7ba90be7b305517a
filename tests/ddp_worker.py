"""Run by tests/test_distributed.py under torchrun: plain `llm_ner.training.train.train` (no code change for DDP),
plus a callback that writes a digest of this rank's weights when training ends, so the test can compare ranks."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from llm_ner.config import load_config
from llm_ner.training.train import train


class WeightDigest(TrainerCallback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_end(self, args, state, control, model=None, **kwargs):
        h = hashlib.sha256()
        for name, p in sorted(model.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        first = next(p for p in model.parameters() if p.requires_grad).detach().flatten()[:4].tolist()
        rank = int(os.environ.get("RANK", 0))
        (self.out / f"rank{rank}.json").write_text(json.dumps({
            "digest": h.hexdigest(), "first": first, "step": state.global_step,
            "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None}))


if __name__ == "__main__":
    backbone, out = sys.argv[1], Path(sys.argv[2])
    cfg = load_config(None, {
        "model.backbone": backbone, "output": str(out), "training.mode": "full", "training.max_steps": 4,
        "training.batch_size": 4, "training.eval_steps": 2, "training.logging_steps": 1,
        "data.max_train_sentences": 64, "data.max_dev_sentences": 16, "data.test": None})
    out.mkdir(parents=True, exist_ok=True)
    train(cfg, progress=False, callbacks=[WeightDigest(out)])
