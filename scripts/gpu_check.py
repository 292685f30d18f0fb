#!/usr/bin/env python3
"""Figures of the Hugging Face engine on a CUDA GPU (scripts/gpu-check.sh runs this).

1. A random Llama of SmolLM2-135M's shape, written as a model folder (nothing is downloaded).
2. The engine (trainers/hf/dacp_hf_trainer.py) trains it through the protocol (dacp-trainer/2) in
   bf16, and a plain PyTorch loop trains the same model on the same batches in the same process
   tree: tokens/s of each and the ratio (target ≥ 0.9).
3. The engine is SIGKILLed after a checkpoint and resumed: the final weights must equal those of an
   uninterrupted run (deterministic kernels).
4. With two or more GPUs, FSDP over all of them (at most 8): tokens/s, and its losses against the
   one-process run's.

Prints one JSON object. `--smoke` runs a tiny shape in float32 on whatever device there is, to check
the script itself on a machine without a GPU.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAINER = os.path.join(ROOT, "trainers", "hf", "dacp_hf_trainer.py")
sys.path.insert(0, os.path.join(ROOT, "trainers", "hf"))
from dacp_data import lm_batches  # noqa: E402
from dacp_hf_common import sha256_file as sha256  # noqa: E402

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)


def make_model(folder: str, shape: dict) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape))
    model.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def write_tokens(path: str, n: int, vocab: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.randint(1, vocab, (n,), generator=g, dtype=torch.int32).numpy().tofile(path)


def job(folder: str, work: str, name: str, steps: int, batch: int, context: int, precision: str, resume=None, parallel="ddp") -> str:
    spec = {
        "protocol": "dacp-trainer/2", "stage": "dacp", "initModelDir": folder, "contextLength": context,
        "data": {"kind": "lm", "domain": os.path.join(work, "domain.i32"), "replay": os.path.join(work, "replay.i32"), "replayRatio": 0.25},
        "settings": {"totalSteps": steps, "batchSize": batch, "learningRate": 3e-4, "warmupSteps": 2, "minLrRatio": 0.1,
                     "weightDecay": 0.01, "gradClip": 1.0, "seed": 7},
        "checkpointEvery": max(1, steps // 3), "checkpointDir": os.path.join(work, name, "checkpoints"),
        "resumeFrom": resume, "outputModelDir": os.path.join(work, name, "model"),
        "hf": {"lora": None, "gradientCheckpointing": False, "precision": precision, "parallel": parallel},
    }
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def run_engine(job_path: str, kill_after_checkpoint=False, processes=1):
    """The trainer through the protocol: (events with arrival times, the SIGKILLed checkpoint or None)."""
    env = {**os.environ, "DACP_DETERMINISTIC": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    process = subprocess.Popen([*launcher, TRAINER, "--job", job_path], stdout=subprocess.PIPE, stderr=sys.stderr,
                               text=True, env=env, start_new_session=True)
    events = []
    for line in process.stdout:
        event = json.loads(line)
        events.append((time.monotonic(), event))
        if kill_after_checkpoint and event["event"] == "checkpoint":
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return events, event["path"]
    if process.wait() != 0:
        raise SystemExit(f"gpu-check: the trainer failed on {job_path} (exit {process.returncode})")
    return events, None


def engine_tokens_per_second(events, batch: int, context: int, warmup: int) -> float:
    progress = [(t, e["step"]) for t, e in events if e["event"] in ("progress", "done") and e["step"] >= warmup]
    (t0, s0), (t1, s1) = progress[0], progress[-1]
    return (s1 - s0) * batch * context / (t1 - t0)


def plain_loop(folder: str, work: str, steps: int, batch: int, context: int, bf16: bool, warmup: int) -> float:
    """A plain PyTorch loop on the same model and batches: the yardstick."""
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    read = lambda name: torch.from_numpy(__import__("numpy").fromfile(os.path.join(work, name), dtype="int32")).to(torch.int64)  # noqa: E731
    batches = lm_batches(read("domain.i32"), read("replay.i32"), 0.25, batch, context, 7)
    started = None
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.monotonic()
        x, y, _ = batches(step)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (steps - warmup) * batch * context / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model in float32: checks the script on any machine")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu-check: no CUDA device is visible; run on a GPU machine, or pass --smoke to check the script", file=sys.stderr)
        return 2
    shape, batch, context = (TINY, 4, 64) if args.smoke else (SMOLLM2_135M, 8, 1024)
    steps = args.steps or (12 if args.smoke else 40)
    warmup = 3
    precision = "fp32" if args.smoke else "bf16"
    work = tempfile.mkdtemp(prefix="dacp-gpu-check-")
    folder = os.path.join(work, "base")
    parameters = make_model(folder, shape)
    write_tokens(os.path.join(work, "domain.i32"), 400_000, shape["vocab_size"], 1)
    write_tokens(os.path.join(work, "replay.i32"), 200_000, shape["vocab_size"], 2)

    events, _ = run_engine(job(folder, work, "engine", steps, batch, context, precision))
    engine = engine_tokens_per_second(events, batch, context, warmup)
    plain = plain_loop(folder, work, steps, batch, context, precision == "bf16", warmup)

    _, checkpoint = run_engine(job(folder, work, "killed", steps, batch, context, precision), kill_after_checkpoint=True)
    run_engine(job(folder, work, "resumed", steps, batch, context, precision, resume=checkpoint))
    whole = sha256(os.path.join(work, "engine", "model", "model.safetensors"))
    resumed = sha256(os.path.join(work, "resumed", "model", "model.safetensors"))

    # FSDP over every GPU (two CPU processes under --smoke): speed, and losses against one process.
    gpus = torch.cuda.device_count() if cuda else 0
    fsdp = f"skipped: {gpus} GPU" if cuda and gpus < 2 else None
    if fsdp is None:
        processes = min(gpus, 8) if cuda else 2
        sharded, _ = run_engine(job(folder, work, "fsdp", steps, batch * max(1, processes // 2), context, precision, parallel="fsdp"),
                                processes=processes)
        losses = {e["step"]: e["loss"] for _, e in events if e["event"] == "progress"}
        fsdp = {"processes": processes, "batch": batch * max(1, processes // 2),
                "tokensPerSec": round(engine_tokens_per_second(sharded, batch * max(1, processes // 2), context, warmup))}
        if not cuda:  # the same batch as the one-process run: the losses must agree
            fsdp["maxLossDiff"] = max(abs(e["loss"] - losses[e["step"]]) for _, e in sharded
                                      if e["event"] == "progress" and e["step"] in losses)
    shutil.rmtree(work, ignore_errors=True)

    print(json.dumps({
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "shape": "SmolLM2-135M" if not args.smoke else "tiny (smoke)",
        "parameters": parameters, "batch": batch, "context": context, "steps": steps, "precision": precision,
        "engineTokensPerSec": round(engine), "plainTokensPerSec": round(plain), "ratio": round(engine / plain, 3),
        "ratioTarget": 0.9,
        "resumeExact": whole == resumed,
        "fsdp": fsdp,
    }))
    return 0 if whole == resumed else 1


if __name__ == "__main__":
    sys.exit(main())
