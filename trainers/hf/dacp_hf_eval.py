#!/usr/bin/env python3
"""The Hugging Face engine's evaluator: dacp's evaluation primitives over JSON lines.

    python dacp_hf_eval.py            requests on stdin, one JSON object per line; answers on stdout

dacp (activities/hfScorer.ts) tokenizes, builds the rows and combines the figures (ml/evaluate.ts,
ml/choices.ts); this process only runs the model, on the GPU where there is one:

    {"op": "load", "name": "base", "modelDir": DIR, "precision": "auto|fp32|bf16"}
                                                            → {"ok": true, "device": "cuda:0", "parameters": N}
    {"op": "nll", "name": "base", "rows": [{inputs, targets, mask}, ...]}
                                                            → {"nll": x, "count": n, "correct": k}
    {"op": "loglik", "name": "base", "rows": [...]}          → {"values": [x, ...]}
    {"op": "generate", "name": "base", "prompt": [ids], "maxNewTokens": n, "eosId": e,
     "contextLength": T, "temperature": t, "topK": k, "seed": s}
                                                            → {"ids": [...]}
    {"op": "unload", "name": "base"}                         → {"ok": true}

Every answer is one line; a failed request answers {"error": "..."} and the process goes on. Greedy
generation takes the lowest id among equal logits, and sampling draws as ml/scorer.ts sampleNext
does, with the same seeded generator, so both engines draw alike from the same logits.
"""

import json
import math
import os
import sys

# Answers go to the real stdout, kept as a private copy of file descriptor 1; everything else that
# writes there (Python's print, native libraries) lands on stderr.
EVENTS = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dacp_hf_common import start_parent_watch  # noqa: E402

start_parent_watch("dacp-hf-eval")

import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

from dacp_data import derive_seed, mulberry32  # noqa: E402

MODELS = {}
BF16 = {}  # name → whether that model is scored under bf16 autocast (the engine's precision setting)


def device():
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def load(request: dict) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(request["modelDir"], torch_dtype=torch.float32, local_files_only=True)
    model.eval().to(device())
    precision = request.get("precision", "auto")
    if precision == "bf16" and not torch.cuda.is_available():
        raise ValueError("precision bf16 needs a CUDA device; use auto or fp32 on a CPU")
    MODELS[request["name"]] = model
    BF16[request["name"]] = torch.cuda.is_available() and precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    return {"ok": True, "device": str(device()), "parameters": sum(p.numel() for p in model.parameters())}


def logits_of(name: str, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(device_type=device().type, dtype=torch.bfloat16, enabled=BF16[name]):
        return MODELS[name](input_ids=inputs.to(device())).logits.float()


def tensors(rows: list):
    inputs = torch.tensor([r["inputs"] for r in rows], dtype=torch.int64)
    targets = torch.tensor([r["targets"] for r in rows], dtype=torch.int64).to(device())
    mask = torch.tensor([r["mask"] for r in rows], dtype=torch.float32).to(device())
    return inputs, targets, mask


def nll(request: dict) -> dict:
    inputs, targets, mask = tensors(request["rows"])
    logits = logits_of(request["name"], inputs)
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    hits = (logits.argmax(dim=-1) == targets).float()
    return {"nll": float(-(picked * mask).sum()), "count": float(mask.sum()), "correct": float((hits * mask).sum())}


def loglik(request: dict) -> dict:
    inputs, targets, mask = tensors(request["rows"])
    logits = logits_of(request["name"], inputs)
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return {"values": [float(v) for v in (picked * mask).sum(-1)]}


def sample_next(logits: list, temperature: float, top_k: int, u: float) -> int:
    """ml/scorer.ts sampleNext: top k by descending logit (ties to the lower id), softmax at `temperature`, one draw."""
    candidates = list(range(len(logits)))
    if 0 < top_k < len(logits):
        candidates.sort(key=lambda i: (-logits[i], i))
        candidates = candidates[:top_k]
    top = max(logits[i] for i in candidates)
    weights = [math.exp((logits[i] - top) / temperature) for i in candidates]
    total = sum(weights)
    acc = 0.0
    for i, w in zip(candidates, weights):
        acc += w / total
        if u < acc:
            return i
    return candidates[-1]


def generate(request: dict) -> dict:
    name = request["name"]
    T, eos = int(request["contextLength"]), int(request["eosId"])
    temperature = float(request.get("temperature") or 0)
    uniform = mulberry32(derive_seed(int(request.get("seed") or 0), "generate"))
    ids = list(request["prompt"]) or [eos]
    generated = []
    for _ in range(int(request["maxNewTokens"])):
        context = torch.tensor([ids[-T:]], dtype=torch.int64)
        last = logits_of(name, context)[0, -1]
        if temperature > 0:
            # float32 values, as the built-in engine reads them; the draw itself in float64.
            following = sample_next([float(x) for x in last.cpu()], temperature, int(request.get("topK") or 0), uniform())
        else:
            following = int(last.argmax())
        if following == eos:
            break
        ids.append(following)
        generated.append(following)
    return {"ids": generated}


def unload(request: dict) -> dict:
    MODELS.pop(request["name"], None)
    BF16.pop(request["name"], None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"ok": True}


def finite(value):
    """JSON has no NaN or infinity: those travel as the strings JavaScript's Number() reads back."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


OPS = {"load": load, "nll": nll, "loglik": loglik, "generate": generate, "unload": unload}


def main() -> int:
    threads = os.environ.get("DACP_TORCH_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = OPS.get(request.get("op"))
            if op is None:
                raise ValueError(f"unknown op {request.get('op')!r}")
            if request.get("op") not in ("load", "unload") and request.get("name") not in MODELS:
                raise ValueError(f"no model named {request.get('name')!r} is loaded")
            answer = op(request)
        except Exception as error:  # one failed request is answered, and the evaluator goes on
            answer = {"error": f"{type(error).__name__}: {error}"}
        EVENTS.write(json.dumps(finite(answer), allow_nan=False) + "\n")
        EVENTS.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
