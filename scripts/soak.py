"""Soak the model-in-the-loop (issue 34): `llm-ner serve` with retraining on, left running for N minutes under mixed
load — prediction clients, training triggers (`/train` with a fresh slice of CoNLL-2003 as a Label Studio export,
409 while a job runs), rollbacks, and restarts (SIGTERM, then a new server on the same training dir) — and checked
all along: the served model is never lost (its files are on disk, the restarted server serves what `current.json`
names), no training process outlives its server, rounds on disk stay within --keep-rounds + the served one, and no
request gets a 5xx outside a restart. Real uvicorn, real HTTP, real `train --init` and gate processes.

  python scripts/soak.py --minutes 30 --output benchmarks/results/soak.json

Without --model it builds the suite's tiny model (tests/tiny.py, trained 10 steps by `llm-ner train`): the soak
tests the service's durability, not a model's speed; give --model RUN/model to soak a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY, TRAIN_KEY = "soak-predict-key", "soak-train-key"


def tiny_model(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_llama

    backbone = make_llama(work / "backbone", layers=2)
    out = work / "start"
    subprocess.run([sys.executable, "-m", "llm_ner.cli", "train", "--model", str(backbone), "--output", str(out),
                    "--max-steps", "10", "--set", "data.max_train_sentences=200", "--set", "data.dev=null",
                    "--set", "data.test=null", "--no-progress"], check=True, capture_output=True)
    return out / "model"


def ls_task(k: int, sent) -> dict:
    """A CoNLL sentence as a Label Studio task with one submitted annotation (and a prediction, which must be
    dropped), sometimes skipped instead (a cancelled annotation, which must not become a label)."""
    from llm_ner.data.schemes import spans

    starts, pos = [], 0
    for t in sent.tokens:
        starts.append(pos)
        pos += len(t) + 1
    text = " ".join(sent.tokens)
    ends = [s + len(t) for s, t in zip(starts, sent.tokens, strict=True)]
    result = [{"type": "labels", "from_name": "label", "to_name": "text",  # spans(): (type, first, last inclusive)
               "value": {"start": starts[f], "end": ends[la], "text": text[starts[f]:ends[la]], "labels": [lab]}}
              for lab, f, la in spans(sent.tags)]
    skipped = k % 9 == 0
    return {"id": k, "data": {"text": text}, "predictions": [{"result": [], "model_version": "x"}],
            "annotations": [{"result": [] if skipped else result, "was_cancelled": skipped}]}


def call(url: str, path: str, body=None, key: str = KEY, timeout: float = 120):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return 0, None  # refused / reset: the server is restarting


class Server:
    def __init__(self, model: Path, train_dir: Path, work: Path, keep: int):
        self.args = [sys.executable, "-m", "llm_ner.cli", "serve", "--model", str(model), "--train-dir",
                     str(train_dir), "--train-set", "training.max_steps=5", "--keep-rounds", str(keep),
                     "--train-timeout", "600", "--train-threads", "1", "--api-key-file", str(work / "keys"),
                     "--train-key-file", str(work / "train_keys"), "--promote-margin", "0"]
        (work / "keys").write_text(KEY + "\n")
        (work / "train_keys").write_text(TRAIN_KEY + "\n")
        self.log = open(work / "server.log", "ab")  # noqa: SIM115 (open for the life of the soak)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([*self.args, "--port", str(port)], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            if call(self.url, "/health")[0] == 200:
                return
            time.sleep(0.5)
        raise SystemExit("the server did not start (see server.log)")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def training_processes(train_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"llm_ner.cli (train|evaluate).*{train_dir}"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--restarts", type=int, default=3, help="server restarts, evenly spread")
    ap.add_argument("--keep-rounds", type=int, default=3)
    ap.add_argument("--output", default="benchmarks/results/soak.json")
    a = ap.parse_args()
    from llm_ner.data import load_corpus

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    model = Path(a.model) if a.model else tiny_model(work)
    train_dir = work / "rounds"
    sents = [s for s in load_corpus("conll2003:train")[:3000] if len(s.tokens) > 3]
    texts = [" ".join(s.tokens) for s in load_corpus("conll2003:test")[:500]]
    server = Server(model, train_dir, work, a.keep_rounds)
    server.start()
    stats = {"predict": {}, "train": {}, "rollback": {}, "restarts": 0, "checks": 0, "violations": [],
             "latency_ms": [], "versions": set(), "jobs": {}}
    lock, stop_at, restarting = threading.Lock(), time.time() + 60 * a.minutes, threading.Event()

    def count(kind: str, status: int) -> None:
        with lock:
            stats[kind][status] = stats[kind].get(status, 0) + 1
            if status >= 500 and not restarting.is_set():
                stats["violations"].append(f"{kind}: {status} outside a restart")

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.time() < stop_at:
            t0 = time.time()
            status, body = call(server.url, "/v1/entities", {"texts": rng.sample(texts, rng.randint(1, 8))})
            count("predict", status)
            if status == 0:
                time.sleep(0.2)  # restarting: do not spin
            if status == 200:
                with lock:
                    stats["latency_ms"].append(1000 * (time.time() - t0))
                    stats["versions"].add(body["model"]["version"])

    def check(where: str) -> None:
        """The served model's files are on disk; what current.json names is what /health says is served."""
        stats["checks"] += 1
        status, tr = call(server.url, "/v1/training")
        if status != 200:
            return
        for j in tr["jobs"]:
            stats["jobs"][j["round"]] = (j["status"], j["promoted"])
        cur = tr["served"]
        if cur and not (train_dir / cur / "model" / "llm_ner_config.json").is_file():
            stats["violations"].append(f"{where}: the served round {cur} has no model on disk")
        rounds = [p for p in train_dir.glob("round_*") if p.is_dir()]
        if len(rounds) > a.keep_rounds + 1 + 1:  # the kept, the served, and one being trained
            stats["violations"].append(f"{where}: {len(rounds)} rounds on disk")

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(a.clients)]
    for t in threads:
        t.start()
    rng, k = random.Random(0), 0
    restart_every = 60 * a.minutes / (a.restarts + 1)
    next_restart = time.time() + restart_every
    while time.time() < stop_at:
        export = [ls_task(k + i, s) for i, s in enumerate(rng.sample(sents, 40))]
        k += 40
        count("train", call(server.url, "/train", {"annotations": export}, key=TRAIN_KEY)[0])
        time.sleep(rng.uniform(5, 20))
        if rng.random() < 0.2:  # an operator rolls back to a kept round, or to the start
            status, tr = call(server.url, "/v1/training")
            done = [j["round"] for j in (tr or {}).get("jobs", []) if j["status"] == "done"
                    and (train_dir / j["round"] / "model").is_dir()]
            target = rng.choice(done + ["start"])
            count("rollback", call(server.url, "/v1/training/rollback", {"round": target}, key=TRAIN_KEY)[0])
        check("running")
        if time.time() > next_restart and stats["restarts"] < a.restarts:
            status, before = call(server.url, "/v1/training")
            served_before = before["served"] if before else None
            version_before = call(server.url, "/health")[1]["model"]["version"]
            restarting.set()
            server.stop()
            # the gate both ways: every other server demands 2 F1 points over the served model
            server.args[-1] = "2" if server.args[-1] == "0" else "0"
            if orphans := training_processes(train_dir):
                stats["violations"].append(f"restart: training processes left behind: {orphans}")
            server.start()
            restarting.clear()
            stats["restarts"] += 1
            next_restart += restart_every
            _, after = call(server.url, "/v1/training")
            version_after = call(server.url, "/health")[1]["model"]["version"]
            if after["served"] != served_before or version_after != version_before:
                stats["violations"].append(f"restart: served {served_before} ({version_before}) before, "
                                           f"{after['served']} ({version_after}) after")
            check("after restart")
    for t in threads:
        t.join()
    check("end")
    server.stop()
    for p in train_dir.glob("round_*/job.json"):  # the stop marks a running job interrupted
        rec = json.loads(p.read_text())
        stats["jobs"][rec["round"]] = (rec["status"], rec.get("promoted"))
    if orphans := training_processes(train_dir):
        stats["violations"].append(f"end: training processes left behind: {orphans}")
    jobs = list(stats["jobs"].values())  # every round seen, also those pruned since
    lat = sorted(stats.pop("latency_ms"))
    out = {"minutes": a.minutes, "clients": a.clients, "model": "tiny (tests/tiny.py)" if not a.model else a.model,
           "predict": stats["predict"], "train_calls": stats["train"], "rollbacks": stats["rollback"],
           "restarts": stats["restarts"], "checks": stats["checks"], "versions_served": len(stats["versions"]),
           "latency_ms": {"p50": round(statistics.median(lat), 1), "p95": round(lat[int(0.95 * len(lat))], 1)}
           if lat else None,
           "jobs": {s: sum(st == s for st, _ in jobs) for s in {st for st, _ in jobs}},
           "promoted": sum(p is True for _, p in jobs), "kept_not_served": sum(p is False for _, p in jobs),
           "rounds_on_disk": len(list(train_dir.glob("round_*"))), "violations": stats["violations"],
           "machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    Path(a.output).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps(out, indent=1, default=str))
    sys.exit(1 if stats["violations"] else 0)


if __name__ == "__main__":
    main()
