"""Benchmark: a 20-trial `ktk tune` sweep in one process and with 1, 2, ... supervised worker processes.

Each sweep is a whole fresh `ktk tune` process (imports, data loading, worker start-up and the retraining
of best/ included, as a user would run it) on a small digits MLP (benchmarks/distributed_digits.yaml).
It reports, per setting: the wall time, the trials per minute between the first and the last finished
trial (steady state, start-up excluded), and the speed-up over one worker. It also samples the resident
memory (RSS) of every worker, with the trial processes it runs, twice a second over a longer sweep, and
reports each worker's memory at its first and last finished trial and its peak.

    python benchmarks/distributed_throughput.py [--trials 20] [--workers 1 2] [--memory-trials 60]

On a 2-core machine more than 2 workers only compete for the same cores.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's toolkit, imported below

from toolkit.distributed.supervisor import WORKERS_FILE
from toolkit.results import LOGS_DIR
from toolkit.sweeps.runner import rss_mb

CONFIG = HERE / "distributed_digits.yaml"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def group_rss_mb(pgid):
    """Resident memory of every process in a process group (a worker and the trial process it runs)."""
    total_kb = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            total_kb += int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            continue
    return total_kb / 1024


def sweep(work, name, trials, workers, sample_memory=False):
    """Runs one `ktk tune` and returns its timings (and memory samples)."""
    out = work / name
    command = [sys.executable, "-m", "toolkit", "tune", str(CONFIG), "--out", str(out),
               "--set", f"search.max_trials={trials}"]
    if workers:
        command += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    lines = []
    samples = {}  # worker id -> [(time, MB)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=REPO)
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            try:
                pids = json.loads((out / LOGS_DIR / WORKERS_FILE).read_text())
            except (OSError, ValueError):
                pids = {}
            now = time.perf_counter() - start
            for worker_id, pid in pids.items():
                samples.setdefault(worker_id, []).append((now, rss_mb(pid), group_rss_mb(pid)))
            samples.setdefault("chief", []).append((now, rss_mb(process.pid), None))

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    for line in process.stdout:
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
    code = process.wait()
    done.set()
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"failed ({code}): {' '.join(command)}\n" + "\n".join(l for _, l in lines[-30:]))
    ends = [(t, line) for t, line in lines if re.match(r"trial \d+/", line)]
    first, last = ends[0][0], ends[-1][0]
    per_minute = (len(ends) - 1) / (last - first) * 60 if len(ends) > 1 and last > first else float("nan")
    trial_ends = {}
    for t, line in ends:
        match = re.search(r"\[(\w+)\]", line)
        if match:
            trial_ends.setdefault(match.group(1), []).append(t)
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "first_trial_s": first, "per_minute": per_minute, "trials": len(ends),
            "samples": samples, "trial_ends": trial_ends}


def memory_at(samples, moment):
    """The worker process's own RSS (MB) in the sample nearest before `moment`."""
    before = [mb for t, mb, _ in samples if t <= moment and mb]
    return before[-1] if before else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-trials", type=int, default=60, help="trials of the memory sweep (0: none)")
    parser.add_argument("--memory-workers", type=int, default=2)
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput sweeps")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; {args.trials}-trial sweeps of {CONFIG.name}")
    work = Path(tempfile.mkdtemp(prefix="ktk-dist-bench-"))
    try:
        results = {}
        if not args.memory_only:
            results["one process"] = sweep(work, "single", args.trials, 0)
            for workers in args.workers:
                results[f"{workers} worker(s)"] = sweep(work, f"w{workers}", args.trials, workers)
        base = results.get("1 worker(s)")
        if results:
            print("\n| setting | wall time | first trial at | trials/min (steady) | speed-up vs 1 worker |")
            print("| --- | --- | --- | --- | --- |")
        for name, r in results.items():
            speedup = f"{r['per_minute'] / base['per_minute']:.2f}x" if base else "-"
            print(f"| {name} | {r['wall_s']:.1f} s | {r['first_trial_s']:.1f} s | {r['per_minute']:.1f} | {speedup} |")
        if args.memory_trials:
            r = sweep(work, "memory", args.memory_trials, args.memory_workers, sample_memory=True)
            print(f"\nmemory over a {args.memory_trials}-trial sweep with {args.memory_workers} workers "
                  f"({r['wall_s']:.0f} s). A worker process lives for the whole sweep; the trial processes it "
                  "runs are replaced every search.trials_per_process trials (the next one starts during the "
                  "last trial of the current one), so the peak of a worker with its trial processes counts "
                  "up to two of them:")
            print("| worker | trials | worker RSS at its first trial | at its last trial | growth per trial | "
                  "peak with its trial processes |")
            print("| --- | --- | --- | --- | --- | --- |")
            for worker_id, ends in sorted(r["trial_ends"].items()):
                samples = r["samples"].get(worker_id, [])
                first, last = memory_at(samples, ends[0]), memory_at(samples, ends[-1])
                peak = max((group for _, _, group in samples if group), default=float("nan"))
                growth = (last - first) / max(1, len(ends) - 1)
                print(f"| {worker_id} | {len(ends)} | {first:.0f} MB | {last:.0f} MB | {growth:+.2f} MB | "
                      f"{peak:.0f} MB |")
            chief = [mb for _, mb, _ in r["samples"].get("chief", []) if mb]
            if chief:
                print(f"| chief (serves the oracle, then retrains best/) | - | {chief[0]:.0f} MB | {chief[-1]:.0f} MB "
                      f"| - | {max(chief):.0f} MB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
