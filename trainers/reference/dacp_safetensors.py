"""The safetensors format and dacp's tensor digest, by hand (struct + json), as in ml/safetensors.ts.

    [8 bytes: header length N, u64 little-endian]
    [N bytes: JSON {"name": {"dtype","shape","data_offsets":[begin,end]}, ..., "__metadata__": {str: str}},
              padded with spaces to a multiple of 8]
    [data: raw little-endian tensors; offsets relative to the start of this section]

Only F32 is read and written: the dacp model format holds nothing else.
"""

import ctypes
import hashlib
import json
import struct
import sys

import torch

METADATA_KEY = "__metadata__"
MAX_HEADER_BYTES = 100_000_000

if sys.byteorder != "little":
    raise RuntimeError("safetensors: big-endian hosts are not supported")


def _compact(value) -> str:
    """JSON.stringify's spelling: no spaces, non-ASCII kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _raw(tensor: torch.Tensor) -> bytes:
    """The tensor's float32 values as little-endian bytes (no numpy: a copy straight from its memory)."""
    flat = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return ctypes.string_at(flat.data_ptr(), flat.numel() * 4) if flat.numel() else b""


def tensors_digest(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (ml/safetensors.ts tensorsDigest)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(_compact([name, "F32", list(tensor.shape)]).encode("utf-8"))
        digest.update(_raw(tensor))
    return digest.hexdigest()


def encode(tensors: dict, metadata: dict) -> bytes:
    """Same bytes as ml/safetensors.ts encodeSafetensors for the same F32 tensors and metadata."""
    header = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    chunks = []
    offset = 0
    for name in sorted(tensors):
        if name == METADATA_KEY:
            raise ValueError(f'safetensors: "{METADATA_KEY}" is reserved and cannot name a tensor')
        data = _raw(tensors[name])
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        chunks.append(data)
    text = _compact(header)
    text += " " * ((8 - len(text.encode("utf-8")) % 8) % 8)
    head = text.encode("utf-8")
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def decode(buf: bytes):
    """→ (tensors {name: float32 tensor}, metadata {str: str}); rejects truncated, overlapping or non-F32 data."""
    def corrupt(why: str) -> ValueError:
        return ValueError(f"not a valid safetensors file ({len(buf)} bytes): {why}")

    if len(buf) < 8:
        raise corrupt("shorter than the 8-byte header length")
    (header_length,) = struct.unpack_from("<Q", buf, 0)
    if header_length > MAX_HEADER_BYTES:
        raise corrupt(f"header length {header_length} is implausibly large")
    if 8 + header_length > len(buf):
        raise corrupt(f"header says {header_length} bytes but only {len(buf) - 8} follow (truncated?)")
    header_end = 8 + header_length
    try:
        header = json.loads(buf[8:header_end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise corrupt(f"header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    metadata = header.pop(METADATA_KEY, {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise corrupt(f'"{METADATA_KEY}" must map strings to strings')

    data_length = len(buf) - header_end
    spans = []
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f'tensor "{name}" has a malformed entry') from None
        if dtype != "F32":
            raise corrupt(f'tensor "{name}" has dtype {dtype}; the dacp model format holds only F32')
        count = 1
        for d in shape:
            count *= d
        if not (0 <= begin <= end <= data_length):
            raise corrupt(f'tensor "{name}" spans bytes {begin}..{end} but the data section has {data_length} (truncated?)')
        if end - begin != 4 * count:
            raise corrupt(f'tensor "{name}" has {end - begin} bytes, shape {shape} needs {4 * count}')
        # bytearray: a writable copy, so the tensor owns its memory and may sit at any offset.
        raw = bytearray(buf[header_end + begin:header_end + end])
        tensors[name] = torch.frombuffer(raw, dtype=torch.float32).reshape(shape) if count else torch.zeros(shape)
        spans.append((begin, end, name))
    expected = 0
    for begin, end, name in sorted(spans):
        if begin != expected:
            raise corrupt(f'tensor "{name}" starts at byte {begin}, expected {expected} (overlap or gap)')
        expected = end
    if expected != data_length:
        raise corrupt(f"data section has {data_length} bytes but tensors cover {expected}")
    return tensors, metadata
