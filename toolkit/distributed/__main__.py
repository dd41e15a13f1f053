"""``python -m toolkit.distributed``: a worker process started by a chief's supervisor."""

from toolkit.distributed.worker import exit_now, worker_process_main

if __name__ == "__main__":  # pragma: no cover - a supervised worker process
    exit_now(worker_process_main())
