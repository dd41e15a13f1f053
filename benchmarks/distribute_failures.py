"""How long the other process of a two-process ``multi_worker`` run takes to stop when one dies or freezes.

Two ``ktk run`` processes train a small model on loopback (``training.distribute: multi_worker``, 500 epochs);
once two epochs are done, one of them is killed (SIGKILL: its sockets close, as when a process crashes) or
frozen (SIGSTOP: its sockets stay open and it says nothing, as when a machine hangs or drops off the network),
and the time until the other has exited (with its one ``ktk: error:`` line) is measured. Each way round: the
worker and the chief.

    PYTHONPATH=$PWD python benchmarks/distribute_failures.py [--repeat 3] [--signals KILL,STOP]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "name": "dist-failure",
    "seed": 3,
    "data": {"source": "synthetic.moons", "options": {"n_samples": 300, "noise": 0.3}},
    "model": {"hidden": [16]},
    "training": {"epochs": 500, "batch_size": 32, "distribute": "multi_worker"},
}


def free_ports(count: int) -> list:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def once(folder: Path, kill: int, signal_name: str) -> float:
    """Seconds from signalling process `kill` (0: the chief, 1: the worker) to the other's exit."""
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    cluster = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    processes = [subprocess.Popen([sys.executable, "-m", "toolkit", "run", str(config), "--role", role, "--cluster",
                                   cluster, "--index", str(i), "--out", str(folder / f"run{i}"), "-q"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i, role in enumerate(("chief", "worker"))]
    try:
        history = folder / "run0" / "history.csv"
        while not (history.exists() and len(history.read_text().splitlines()) > 2):
            if any(p.poll() is not None for p in processes):
                raise RuntimeError(processes[0].communicate()[1] + processes[1].communicate()[1])
            time.sleep(0.05)
        processes[kill].send_signal(getattr(signal, f"SIG{signal_name}"))
        killed = time.monotonic()
        other = processes[1 - kill]
        _, err = other.communicate(timeout=600)
        seconds = time.monotonic() - killed
        print(f"  SIG{signal_name} to the {'chief' if kill == 0 else 'worker'}: the other exited {other.returncode} "
              f"after {seconds:.1f} s: {err.strip().splitlines()[-1]}", flush=True)
        return seconds
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--signals", default="KILL,STOP", help="signals to send, of KILL and STOP")
    args = parser.parse_args()
    for signal_name in args.signals.split(","):
        for kill, name in ((1, "worker"), (0, "chief")):
            times = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as folder:
                    times.append(once(Path(folder), kill, signal_name))
            print(f"SIG{signal_name} to the {name}: the other stopped after median {statistics.median(times):.1f} s, "
                  f"max {max(times):.1f} s, over {len(times)}", flush=True)


if __name__ == "__main__":
    main()
