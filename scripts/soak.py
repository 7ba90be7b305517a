"""Soak the model-in-the-loop (issues 34, 43): `llm-ner serve` with retraining on and the promotion gate at margin 0,
left running for N minutes under mixed load — prediction clients, training triggers (`/train` with a fresh slice of
CoNLL-2003 as a Label Studio export, 409 while a job runs; every fourth export worse on purpose: the true entities
left out, other words marked), rollbacks, and restarts (SIGTERM, the last one SIGKILL, then a new server on the
same training dir) — and checked all along: the served model is never lost (its files are on disk, the restarted
server serves what `current.json` names), a round worse on purpose is never served, a promoted round never scored
below the model it replaced, the newest --keep-rounds promoted rounds (rollback targets) are never pruned, no
training process outlives its server (not even a SIGKILLed one), rounds on disk stay within --keep-rounds + the
served + the running one, no round number is given twice, and no request gets a 5xx outside a restart. Real
uvicorn, real HTTP, real `train --init` and gate processes; the gate scores on 400 CoNLL-2003 dev sentences
(--promote-data).

  python scripts/soak.py --minutes 30 --output benchmarks/results/soak.json

Without --model it builds the suite's tiny model (tests/tiny.py, trained 300 steps by `llm-ner train`, ~33 dev F1:
enough for a worse round to score worse): the soak tests the service's durability, not a model's speed; give
--model RUN/model to soak a real one.
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
                    "--max-steps", "300", "--set", "data.max_train_sentences=3000", "--set", "data.dev=null",
                    "--set", "data.test=null", "--set", "training.learning_rate=3e-3", "--no-progress"],
                   check=True, capture_output=True)
    return out / "model"


def ls_task(k: int, sent, worse: bool = False) -> dict:
    """A CoNLL sentence as a Label Studio task with one submitted annotation (and a prediction, which must be
    dropped), sometimes skipped instead (a cancelled annotation, which must not become a label); `worse`: the true
    entities left out and words outside them marked instead, under a type by turn (noise an annotator would not make
    by accident). Tried before: types rotated (PER as LOC ...) — on the tiny model one such round scored 35.39
    against the served 33.90 on the gold held-out data, not worse, so the gate rightly served it; no entity at all —
    `train` refuses an export without entities, so the round never reached the gate."""
    from llm_ner.data.schemes import spans

    starts, pos = [], 0
    for t in sent.tokens:
        starts.append(pos)
        pos += len(t) + 1
    text = " ".join(sent.tokens)
    ends = [s + len(t) for s, t in zip(starts, sent.tokens, strict=True)]
    result = [{"type": "labels", "from_name": "label", "to_name": "text",  # spans(): (type, first, last inclusive)
               "value": {"start": starts[f], "end": ends[la], "text": text[starts[f]:ends[la]], "labels": [lab]}}
              for lab, f, la in (_noise(sent, k) if worse else spans(sent.tags))]
    skipped = k % 9 == 0
    return {"id": k, "data": {"text": text}, "predictions": [{"result": [], "model_version": "x"}],
            "annotations": [{"result": [] if skipped else result, "was_cancelled": skipped}]}


def _noise(sent, k: int) -> list[tuple[str, int, int]]:
    """One-word spans on every other word outside the true entities, types in turn."""
    outside = [i for i, t in enumerate(sent.tags) if t == "O"][k % 2::2]
    return [(("PER", "LOC", "ORG", "MISC")[(k + j) % 4], i, i) for j, i in enumerate(outside)]


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
    def __init__(self, model: Path, train_dir: Path, work: Path, keep: int, holdout: Path):
        self.args = [sys.executable, "-m", "llm_ner.cli", "serve", "--model", str(model), "--train-dir",
                     str(train_dir), "--train-set", "training.max_steps=20", "--train-set",
                     "training.learning_rate=3e-3", "--keep-rounds", str(keep), "--train-timeout", "600",
                     "--train-threads", "1", "--api-key-file", str(work / "keys"), "--train-key-file",
                     str(work / "train_keys"), "--promote-data", str(holdout), "--promote-margin", "0"]
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

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
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
    from llm_ner.data import write_conll

    sents = [s for s in load_corpus("conll2003:train")[3000:6000] if len(s.tokens) > 3]  # not the start's 3,000
    texts = [" ".join(s.tokens) for s in load_corpus("conll2003:test")[:500]]
    holdout = work / "holdout.conll"
    write_conll(holdout, load_corpus("conll2003:valid")[:400], None)
    server = Server(model, train_dir, work, a.keep_rounds, holdout)
    server.start()
    stats = {"predict": {}, "train": {}, "rollback": {}, "restarts": 0, "checks": 0, "violations": [],
             "latency_ms": [], "versions": set(), "jobs": {}, "worse": set(), "promoted": [], "given": set()}
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
            stats["jobs"][j["round"]] = (j["status"], j["promoted"], j["f1"], j["served_f1"])
            if j["promoted"] and j["round"] not in stats["promoted"]:
                stats["promoted"].append(j["round"])
            if j["promoted"] and j["f1"] < j["served_f1"]:
                stats["violations"].append(f"{where}: {j['round']} promoted with F1 {j['f1']} < {j['served_f1']}")
            if j["promoted"] and j["round"] in stats["worse"]:
                stats["violations"].append(f"{where}: {j['round']}, worse on purpose, was promoted ({j})")
        cur = tr["served"]
        if cur in stats["worse"]:
            stats["violations"].append(f"{where}: {cur}, worse on purpose, is served")
        if cur and not (train_dir / cur / "model" / "llm_ner_config.json").is_file():
            stats["violations"].append(f"{where}: the served round {cur} has no model on disk")
        for r in stats["promoted"][-a.keep_rounds:]:  # rollback targets
            if not (train_dir / r / "model" / "llm_ner_config.json").is_file():
                stats["violations"].append(f"{where}: promoted round {r}, a rollback target, is gone")
        rounds = [p for p in train_dir.glob("round_*") if p.is_dir()]
        if len(rounds) > a.keep_rounds + 1 + 1:  # the kept, the served, and one being trained
            stats["violations"].append(f"{where}: {len(rounds)} rounds on disk")

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(a.clients)]
    for t in threads:
        t.start()
    rng, k = random.Random(0), 0
    restart_every = 60 * a.minutes / (a.restarts + 1)
    next_restart = time.time() + restart_every
    n_train = 0
    while time.time() < stop_at:
        worse = n_train % 4 == 3
        export = [ls_task(k + i, s, worse=worse) for i, s in enumerate(rng.sample(sents, 40))]
        k += 40
        status, body = call(server.url, "/train", {"annotations": export}, key=TRAIN_KEY)
        count("train", status)
        if status == 201:
            n_train += 1
            name = body["result"]["round"]
            if name in stats["given"]:  # a round's number is given once, ever (its records would mix)
                stats["violations"].append(f"train: {name} given a second time")
            stats["given"].add(name)
            if worse:
                stats["worse"].add(name)
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
            last = stats["restarts"] == a.restarts - 1  # the last one as the OOM killer would: SIGKILL
            server.stop(signal.SIGKILL if last else signal.SIGTERM)
            time.sleep(2)  # the parent-death signal is immediate; give the kernel a moment to reap
            if orphans := training_processes(train_dir):
                stats["violations"].append(f"restart ({'SIGKILL' if last else 'SIGTERM'}): training processes "
                                           f"left behind: {orphans}")
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
        stats["jobs"][rec["round"]] = (rec["status"], rec.get("promoted"), rec.get("f1"), rec.get("served_f1"))
    if orphans := training_processes(train_dir):
        stats["violations"].append(f"end: training processes left behind: {orphans}")
    jobs = list(stats["jobs"].values())  # every round seen, also those pruned since
    lat = sorted(stats.pop("latency_ms"))
    out = {"minutes": a.minutes, "clients": a.clients, "model": "tiny (tests/tiny.py)" if not a.model else a.model,
           "predict": stats["predict"], "train_calls": stats["train"], "rollbacks": stats["rollback"],
           "restarts": stats["restarts"], "checks": stats["checks"], "versions_served": len(stats["versions"]),
           "latency_ms": {"p50": round(statistics.median(lat), 1), "p95": round(lat[int(0.95 * len(lat))], 1)}
           if lat else None,
           # a round pruned between two checks keeps the status it was last seen with ("running": its end unseen)
           "jobs_last_seen": {s: sum(j[0] == s for j in jobs) for s in {j[0] for j in jobs}},
           "promoted": sum(j[1] is True for j in jobs), "kept_not_served": sum(j[1] is False for j in jobs),
           "worse_on_purpose": {r: stats["jobs"].get(r) for r in sorted(stats["worse"])},
           "worse_scored_below_served": sum(1 for r in stats["worse"] if (j := stats["jobs"].get(r)) and j[2]
                                            is not None and j[2] < j[3]),
           "rounds_on_disk": len(list(train_dir.glob("round_*"))), "violations": stats["violations"],
           "machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    Path(a.output).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps(out, indent=1, default=str))
    sys.exit(1 if stats["violations"] else 0)


if __name__ == "__main__":
    main()
