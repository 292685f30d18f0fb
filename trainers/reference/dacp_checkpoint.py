"""Files: atomic writes, sha256 of a file, and this trainer's private checkpoint format.

A checkpoint is torch.save of a dict of tensors and plain values: weights, AdamW moments, step,
last loss, config and settings. Batches and the learning rate are functions of (seed, step), so
nothing else is needed to continue bit for bit.
"""

import hashlib
import io
import os

import torch

CHECKPOINT_FORMAT = "dacp-reference-checkpoint/1"


def write_atomically(path: str, data: bytes) -> None:
    """temp file → fsync → rename → fsync the folder: readers see the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(folder: str, state: dict):
    """Writes step-N.pt into folder; → (absolute path, sha256 of its bytes).

    Older checkpoints stay: dacp reads each announced file after the event, possibly while
    training has moved on, so deleting one could pull it from under that read.
    """
    path = os.path.abspath(os.path.join(folder, f"step-{state['step']}.pt"))
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    data = buffer.getvalue()
    write_atomically(path, data)
    return path, hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ValueError(f"resumeFrom {path} is not a readable checkpoint of this trainer ({error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"resumeFrom {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return state
