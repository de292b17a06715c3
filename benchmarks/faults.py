"""Faults at scale: kill storms, database outages and SIGTERMs, tuner against plain Optuna.

Each scenario runs workers on tiny data (a few real clothing images per class,
``weights=none``) and injects one kind of fault again and again; afterwards
workers are started once more until the study holds its budget, and the
study is read back:

- **storm**: every 3-7 s a random one of two workers is SIGKILLed and started
  again, for ``--storm-minutes`` (5) minutes;
- **outage-N**: the study's own PostgreSQL server (``initdb``/``pg_ctl`` on a
  free port) is stopped for N seconds (5, 30 and 120) while two workers train;
- **sigterm**: a lone worker gets SIGTERM at a random moment ``--sigterms``
  (20) times, and is started again each time.

Plain Optuna runs the same scenarios with the setup its documentation gives
for shared studies: ``RDBStorage`` with a heartbeat and
``RetryHeartbeatStaleTrialCallback(max_retry=3)``, ``study.optimize`` with a
``MaxTrialsCallback`` for the study-wide budget, and an objective that sleeps
through its epochs and reports each one. It is restarted the same way.

Columns: *finished* (COMPLETE + PRUNED, against the budget), *lost* (failed
trials whose parameters were never finished by a retry and were not reported
as given up), *stuck* (RUNNING at the end), *retried* (retry trials queued),
*gave up* (reported), *exits* (worker exit codes, counted), *tracebacks*.

    python3 benchmarks/faults.py                          # everything, about 35 minutes
    python3 benchmarks/faults.py --scenarios outage-5,sigterm --sigterms 5
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import make_subset  # noqa: E402
from tests.faultkit import own_postgres  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Run:
    """One scenario for one system: its workers, logs and exit codes."""

    system: str
    url: str
    root: Path
    args: list[str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    faults: int = 0

    def start(self) -> subprocess.Popen[bytes]:
        log = self.root / f"{self.system}-{len(self.logs)}.log"
        self.logs.append(log)
        if self.system == "tuner":
            cmd = [sys.executable, "-m", "tuner", "worker", "--study", "clothing",
                   "--storage", self.url, *self.args]  # fmt: skip
        else:
            cmd = [sys.executable, __file__, "--plain-worker", self.url, *self.args]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root)
        self.procs.append(proc)
        return proc

    def reap(self, proc: subprocess.Popen[bytes], timeout: float = 900) -> None:
        self.exits.append(proc.wait(timeout=timeout))

    def finish(self, workers: int = 2) -> None:
        """Wait for the workers; then start fresh ones until they exit without a fault."""
        for proc in [p for p in self.procs if p.returncode is None]:
            self.reap(proc)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not self.complete():
            fresh = [self.start() for _ in range(workers)]
            for proc in fresh:
                self.reap(proc)

    def complete(self) -> bool:
        trials = self.trials()
        budget = int(self.args[self.args.index("--n-trials") + 1])
        return sum(t.state in FINISHED for t in trials) >= budget

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name="clothing", storage=self.url).get_trials()
        except Exception:  # no study yet
            return []


def tuner_args(data: Path, cache: Path, trials: int, epochs: int, cached: bool) -> list[str]:
    sets = {
        "data.dir": data, "model.weights": "none", "train.epochs": epochs,
        "data.image_size": "[71, 71]", "data.batch_size": 8, "cache.dir": cache,
        "cache.enabled": str(cached).lower(), "storage.heartbeat_interval": 2,
        "storage.grace_period": 10, "storage.outage_tolerance": 180,
    }  # fmt: skip
    return ["--n-trials", str(trials), *(f"--set={k}={v}" for k, v in sets.items())]


def plain_args(trials: int, epochs: int, epoch_seconds: float) -> list[str]:
    return ["--n-trials", str(trials), "--epochs", str(epochs), "--epoch-seconds",
            str(epoch_seconds)]  # fmt: skip


def storm(run: Run, minutes: float, rng: random.Random) -> None:
    workers = [run.start() for _ in range(2)]
    end = time.monotonic() + minutes * 60
    while time.monotonic() < end:
        time.sleep(rng.uniform(3, 7))
        i = rng.randrange(2)
        if workers[i].poll() is None:
            workers[i].kill()
            run.faults += 1
        run.reap(workers[i])
        workers[i] = run.start()


def outage(run: Run, seconds: float, server: object) -> None:
    for _ in range(2):
        run.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and sum(t.state in FINISHED for t in run.trials()) < 3:
        time.sleep(1)
    server.stop("fast")  # type: ignore[attr-defined]
    run.faults += 1
    time.sleep(seconds)
    server.start()  # type: ignore[attr-defined]


def sigterms(run: Run, count: int, rng: random.Random) -> None:
    for _ in range(count):
        proc = run.start()
        time.sleep(rng.uniform(1, 15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            run.faults += 1
        run.reap(proc, timeout=120)
        if run.complete():
            break


def measure(run: Run) -> dict[str, object]:
    trials = run.trials()
    study = optuna.load_study(study_name="clothing", storage=run.url)
    from tuner.storages.retries import gave_up

    given = {r["trials"][0] for r in gave_up(study)}
    finished_params = [t.params for t in trials if t.state in FINISHED]
    lost = 0
    for t in trials:
        root = t.system_attrs.get("failed_trial", t.number)
        params = t.params or t.system_attrs.get("fixed_params", {})
        is_last = not any(u.system_attrs.get("failed_trial") == root and u.number > t.number
                          for u in trials)  # fmt: skip
        if t.state == TrialState.FAIL and is_last and root not in given:
            lost += params not in finished_params
    text = "".join(log.read_text(errors="replace") for log in run.logs)
    budget = int(run.args[run.args.index("--n-trials") + 1])
    return {
        "faults": run.faults,
        "finished": f"{sum(t.state in FINISHED for t in trials)}/{budget}",
        "lost": lost,
        "stuck": sum(t.state == TrialState.RUNNING for t in trials),
        "retried": sum("failed_trial" in t.system_attrs for t in trials),
        "gave up": len(given),
        "exits": ", ".join(f"{c}x{n}" for c, n in sorted(collections.Counter(run.exits).items())),
        "tracebacks": text.count("Traceback"),
    }


def scenario(name: str, system: str, args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    root = tmp / f"{name}-{system}"
    root.mkdir()
    rng = random.Random(args.seed)
    if system == "tuner":
        epochs = 4 if name in ("storm", "sigterm") else 40
        wargs = tuner_args(args.data, tmp / "cache", 20, epochs, cached=name != "storm")
    else:
        wargs = plain_args(20, 10, 0.4 if name in ("storm", "sigterm") else 0.1)
    if name.startswith("outage"):
        with own_postgres() as server:
            run = Run(system, server.password_url, root, wargs)
            outage(run, float(name.split("-")[1]), server)
            run.finish()
            return measure(run)
    run = Run(system, f"sqlite:///{root / 'study.db'}", root, wargs)
    if name == "storm":
        storm(run, args.storm_minutes, rng)
    else:
        sigterms(run, args.sigterms, rng)
    run.finish(workers=1)
    return measure(run)


def plain_worker(argv: list[str]) -> None:
    """A plain Optuna worker, set up the way Optuna documents shared studies."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--n-trials", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--epoch-seconds", type=float)
    a = parser.parse_args(argv)
    storage = optuna.storages.RDBStorage(
        a.url, heartbeat_interval=2, grace_period=10,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(3),
    )  # fmt: skip
    study = optuna.create_study(study_name="clothing", storage=storage, load_if_exists=True,
                                direction="maximize")  # fmt: skip

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        for epoch in range(a.epochs):
            time.sleep(a.epoch_seconds)
            trial.report(lr * epoch, epoch)
        return lr

    budget = optuna.study.MaxTrialsCallback(a.n_trials, states=FINISHED)
    study.optimize(objective, callbacks=[budget])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--plain-worker":
        plain_worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="storm,outage-5,outage-30,outage-120,sigterm")
    parser.add_argument("--systems", default="tuner,plain-optuna")
    parser.add_argument("--storm-minutes", type=float, default=5)
    parser.add_argument("--sigterms", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="tuner-faults-"))
    args.data = make_subset(tmp / "data")
    rows = []
    try:
        for name in args.scenarios.split(","):
            for system in args.systems.split(","):
                began = time.monotonic()
                print(f"running {name} on {system} ...", file=sys.stderr, flush=True)
                row = {"scenario": name, "system": system, **scenario(name, system, args, tmp)}
                row["wall (s)"] = round(time.monotonic() - began)
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
