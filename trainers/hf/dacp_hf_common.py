"""What the Hugging Face engine's trainer, evaluator and scripts/gpu_check.py share."""

import hashlib
import os
import sys
import threading
import time


def start_parent_watch(name: str) -> None:
    """Exit at once when the dacp worker that started us is gone (SIGKILLed, crashed, its host
    rebooted the container): an orphan would hold the GPU memory the next attempt needs.

    DACP_PARENT_PID names the worker (under torchrun our own parent is torchrun, which may outlive
    it). A change of our own parent process is a sign too: torchrun starts its workers in their own
    sessions, so a signal to the trainer's process group does not reach them.
    """
    watched = os.environ.get("DACP_PARENT_PID", "").strip()
    pid = int(watched) if watched.isdigit() else None
    first_parent = os.getppid()

    def alive(watched_pid: int) -> bool:
        try:
            os.kill(watched_pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # alive, another user's

    def watch() -> None:
        while True:
            time.sleep(0.5)
            # Our own parent gone (torchrun killed, say) ends us too, whether or not the worker lives.
            if os.getppid() == first_parent and (pid is None or alive(pid)):
                continue
            print(f"{name}: the dacp worker that started this process is gone; exiting", file=sys.stderr, flush=True)
            os._exit(3)

    threading.Thread(target=watch, name="dacp-parent-watch", daemon=True).start()


def sha256_file(path: str) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
