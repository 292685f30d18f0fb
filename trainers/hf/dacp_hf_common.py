"""What the Hugging Face engine's trainer and evaluator share: the watch on the dacp worker."""

import os
import sys
import threading
import time


def start_parent_watch(name: str) -> None:
    """Exit at once when the dacp worker that started us is gone (SIGKILLed, crashed, its host
    rebooted the container): an orphan would hold the GPU memory the next attempt needs.

    DACP_PARENT_PID names the worker (under torchrun our own parent is torchrun, which may outlive
    it); without it, a change of our parent process is the sign.
    """
    watched = os.environ.get("DACP_PARENT_PID", "").strip()
    pid = int(watched) if watched.isdigit() else None
    first_parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if pid is not None:
                try:
                    os.kill(pid, 0)
                    continue
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue  # alive, another user's
            elif os.getppid() == first_parent:
                continue
            print(f"{name}: the dacp worker that started this process is gone; exiting", file=sys.stderr, flush=True)
            os._exit(3)

    threading.Thread(target=watch, name="dacp-parent-watch", daemon=True).start()
