#!/usr/bin/env python3
"""dacp's reference trainer: docs/trainer-protocol.md (dacp-trainer/1) in PyTorch.

    python dacp_trainer.py --job JOB.json                  train; events on stdout, logs on stderr
    python dacp_trainer.py --logits MODEL --ids 1,2,3      print {"logits": [[...]]} for one sequence
    python dacp_trainer.py --init MODEL --config JSON --seed N
                                                           write the model GPT.create(config, seed) makes

Same model, file format, batches, optimizer and schedule as the built-in engine (ml/); only
the floating-point rounding differs. Stdout carries protocol events and nothing else.
"""

import argparse
import json
import math
import os
import signal
import sys
import time

# Events go to the real stdout; anything else that prints (libraries included) lands on stderr.
EVENTS = sys.stdout
sys.stdout = sys.stderr

# Installed before the slow torch import: a SIGTERM during start-up must not kill us mid-way.
STOP_REQUESTED = False


def _request_stop(signum, _frame):
    global STOP_REQUESTED
    STOP_REQUESTED = True
    print(f"dacp-trainer: received signal {signum}; stopping after the current step", file=sys.stderr, flush=True)


signal.signal(signal.SIGTERM, _request_stop)
signal.signal(signal.SIGINT, _request_stop)

import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch works without numpy here
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dacp_model as model_lib  # noqa: E402
from dacp_checkpoint import load_checkpoint, save_checkpoint, write_atomically, sha256_file  # noqa: E402
from dacp_data import lm_batches, read_sft_examples, read_token_stream, sft_batches  # noqa: E402

PROTOCOL = "dacp-trainer/1"
STAGES = ("bootstrap", "dacp", "instruct")
ADAM = {"beta1": 0.9, "beta2": 0.95, "epsilon": 1e-8}  # ml/train.ts ADAM
PROGRESS_SECONDS = 2.0
SETTING_KEYS = ("totalSteps", "batchSize", "learningRate", "warmupSteps", "minLrRatio", "weightDecay", "gradClip", "seed")


class JobError(Exception):
    """A problem with the job the user can fix; reported as one line, exit code 2."""


def emit(event: str, **fields) -> None:
    line = json.dumps({"event": event, **fields}, allow_nan=False)
    EVENTS.write(line + "\n")
    EVENTS.flush()


def learning_rate_at(settings: dict, step: int) -> float:
    """ml/train.ts learningRateAt: linear warm-up over warmupSteps, then cosine to minLrRatio × peak."""
    peak, warmup, total = settings["learningRate"], settings["warmupSteps"], settings["totalSteps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1, (step - warmup) / max(1, total - warmup))
    floor = peak * settings["minLrRatio"]
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Weights, AdamW moments and the step: everything a checkpoint holds."""

    def __init__(self, params: dict, config: dict, settings: dict):
        self.config = config
        self.settings = settings
        self.params = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
        self.m = {name: torch.zeros_like(p) for name, p in params.items()}
        self.v = {name: torch.zeros_like(p) for name, p in params.items()}
        self.decay = {name: decay for name, _, _, decay in model_lib.parameter_specs(config)}
        self.step = 0
        self.last_loss = float("nan")

    def train_step(self, inputs, targets, mask) -> float:
        lr = learning_rate_at(self.settings, self.step)
        for p in self.params.values():
            p.grad = None
        loss = model_lib.loss(self.params, self.config, inputs, targets, mask)
        loss.backward()
        grads = [self.params[name].grad for name in self.params]
        norm = float(torch.stack([g.square().sum() for g in grads]).sum().sqrt())
        loss_value = float(loss.detach())
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            raise RuntimeError(f"training diverged at step {self.step}: loss {loss_value}, gradient norm {norm}; "
                               "lower learningRate or gradClip")
        clip = self.settings["gradClip"]
        scale = clip / (norm + 1e-6) if clip > 0 and norm > clip else 1.0
        self._adamw(lr, scale)
        self.step += 1
        self.last_loss = loss_value
        return loss_value

    @torch.no_grad()
    def _adamw(self, lr: float, clip_scale: float) -> None:
        """ml/train.ts applyAdamW: bias-corrected moments, decoupled decay on matrices and embeddings only."""
        b1, b2, eps = ADAM["beta1"], ADAM["beta2"], ADAM["epsilon"]
        t = self.step + 1
        correction1, correction2 = 1 - b1 ** t, 1 - b2 ** t  # float64 on the host, like the TS side
        decay_factor = 1 - lr * self.settings["weightDecay"]
        for name, p in self.params.items():
            g = p.grad if clip_scale == 1.0 else p.grad * clip_scale
            m, v = self.m[name], self.v[name]
            m.mul_(b1).add_(g * (1 - b1))
            v.mul_(b2).add_(g.square() * (1 - b2))
            update = (m / correction1) / ((v / correction2).sqrt() + eps)
            if self.decay[name]:
                p.mul_(decay_factor)
            p.sub_(update * lr)

    def state(self) -> dict:
        return {
            "step": self.step, "lastLoss": self.last_loss, "config": self.config, "settings": self.settings,
            "params": {n: p.detach().clone() for n, p in self.params.items()},
            "adam_m": {n: t.clone() for n, t in self.m.items()},
            "adam_v": {n: t.clone() for n, t in self.v.items()},
            "adam": ADAM,
            "torch_rng": torch.get_rng_state(),  # unused by the math today (no dropout); restored anyway
        }

    def restore(self, state: dict) -> None:
        with torch.no_grad():
            for name in self.params:
                self.params[name].copy_(state["params"][name])
                self.m[name].copy_(state["adam_m"][name])
                self.v[name].copy_(state["adam_v"][name])
        self.step = int(state["step"])
        self.last_loss = float(state["lastLoss"])
        torch.set_rng_state(state["torch_rng"])


def read_job(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            job = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise JobError(f"cannot read the job file {path}: {error}") from None
    def need(ok: bool, why: str) -> None:
        if not ok:
            raise JobError(f"job {path}: {why}")

    need(isinstance(job, dict), "is not a JSON object")
    need(job.get("protocol") == PROTOCOL, f'"protocol" must be "{PROTOCOL}", got {job.get("protocol")!r}')
    need(job.get("stage") in STAGES, f'"stage" must be one of {", ".join(STAGES)}, got {job.get("stage")!r}')
    for key in ("modelConfig", "tokenizer", "data", "settings", "checkpointEvery", "checkpointDir", "outputModel"):
        need(key in job, f'"{key}" is missing')
    need(job.get("initModel") is not None or job["stage"] == "bootstrap", '"initModel" is required unless stage is "bootstrap"')
    settings = job["settings"]
    need(isinstance(settings, dict) and all(k in settings for k in SETTING_KEYS), f'"settings" needs {", ".join(SETTING_KEYS)}')
    need(all(isinstance(settings[k], int) and settings[k] > 0 for k in ("totalSteps", "batchSize")),
         "settings.totalSteps and settings.batchSize must be positive integers")
    need(isinstance(job["checkpointEvery"], int) and job["checkpointEvery"] >= 1, '"checkpointEvery" must be a positive integer')
    need(isinstance(job["data"], dict) and job["data"].get("kind") in ("lm", "sft"), 'data.kind must be "lm" or "sft"')
    if job["data"]["kind"] == "lm" and "domainParts" in job["data"]:
        parts = job["data"]["domainParts"]
        need(isinstance(parts, list) and len(parts) > 0 and all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("tokens"), str)
            and isinstance(p.get("weight"), (int, float)) and not isinstance(p.get("weight"), bool) and p["weight"] >= 0
            for p in parts), 'data.domainParts must be a list of {"name", "tokens": file, "weight" ≥ 0}')
    if job["data"]["kind"] == "sft":
        ratio = job["data"].get("replayRatio", 0)
        need(isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 <= ratio < 1,
             f"data.replayRatio must be a number in [0, 1), got {ratio!r}")
        need(ratio == 0 or isinstance(job["data"].get("replay"), str),
             f'data.replayRatio is {ratio} but data.replay names no token file; give one or set replayRatio to 0')
    try:
        job["modelConfig"] = model_lib.check_config(job["modelConfig"])
    except ValueError as error:
        raise JobError(f"job {path}: {error}") from None
    return job


def batch_source(job: dict, config: dict):
    data, settings = job["data"], job["settings"]
    V, T = config["vocabSize"], config["contextLength"]
    if data["kind"] == "lm":
        # Several weighted domain sources replace the one domain stream (docs/trainer-protocol.md).
        parts = [(p["name"], read_token_stream(p["tokens"], V), float(p["weight"])) for p in data["domainParts"]] \
            if "domainParts" in data else None
        domain = read_token_stream(data["domain"], V) if parts is None else torch.zeros(0, dtype=torch.int64)
        return lm_batches(domain, read_token_stream(data["replay"], V), float(data["replayRatio"]),
                          settings["batchSize"], T, settings["seed"], parts)
    # Optional general text trained as plain LM rows; a job without it is pure SFT, as before.
    replay = read_token_stream(data["replay"], V) if data.get("replay") else None
    return sft_batches(read_sft_examples(data["examples"], V), settings["batchSize"], T, settings["seed"],
                       int(data["padId"]), int(data["eosId"]), replay, float(data.get("replayRatio", 0)))


def train(job: dict) -> int:
    settings = {k: job["settings"][k] for k in SETTING_KEYS}
    if job.get("initModel"):
        with open(job["initModel"], "rb") as f:
            params, config, _ = model_lib.decode_model(f.read(), f"initModel {job['initModel']}")
        if config != job["modelConfig"]:
            raise JobError(f"initModel's config {config} differs from the job's modelConfig {job['modelConfig']}")
    else:
        config = job["modelConfig"]
        params = model_lib.init_params(config, settings["seed"])
    torch.manual_seed(settings["seed"])  # init and batches use their own seeded generator (dacp_data)
    trainer = Trainer(params, config, settings)
    if job.get("resumeFrom"):
        state = load_checkpoint(job["resumeFrom"])
        if state["config"] != config or state["settings"] != settings:
            raise JobError(f"checkpoint {job['resumeFrom']} was written for another config or settings "
                           f"({state['config']}, {state['settings']}); it cannot continue this job")
        trainer.restore(state)
        print(f"dacp-trainer: resumed from {job['resumeFrom']} at step {trainer.step}", file=sys.stderr, flush=True)
    batches = batch_source(job, config)
    os.makedirs(job["checkpointDir"], exist_ok=True)

    total, every = settings["totalSteps"], job["checkpointEvery"]
    tokens_per_step = settings["batchSize"] * config["contextLength"]
    tokens = 0
    checkpointed = None  # step of the last checkpoint announced in this attempt
    last_progress = time.monotonic()

    def checkpoint() -> None:
        nonlocal checkpointed, last_progress
        path, digest = save_checkpoint(job["checkpointDir"], trainer.state())
        emit("progress", step=trainer.step, loss=_finite(trainer.last_loss), tokens=tokens)
        emit("checkpoint", step=trainer.step, path=path, sha256=digest)
        checkpointed, last_progress = trainer.step, time.monotonic()

    while trainer.step < total:
        if STOP_REQUESTED:
            if checkpointed != trainer.step:
                checkpoint()
            print(f"dacp-trainer: stopped at step {trainer.step} of {total}", file=sys.stderr, flush=True)
            return 0
        inputs, targets, mask = batches(trainer.step)
        trainer.train_step(inputs, targets, mask)
        tokens += tokens_per_step
        if trainer.step % every == 0 or trainer.step == total:
            checkpoint()
        elif time.monotonic() - last_progress >= PROGRESS_SECONDS or tokens == tokens_per_step:
            emit("progress", step=trainer.step, loss=_finite(trainer.last_loss), tokens=tokens)
            last_progress = time.monotonic()

    out = job["outputModel"]
    write_atomically(out, model_lib.encode_model(trainer.params, config, job["tokenizer"]))
    emit("done", step=trainer.step, loss=_finite(trainer.last_loss), model=out, sha256=sha256_file(out))
    return 0


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def print_logits(model_path: str, ids_text: str) -> int:
    with open(model_path, "rb") as f:
        params, config, _ = model_lib.decode_model(f.read(), model_path)
    try:
        ids = [int(part) for part in ids_text.split(",") if part.strip()]
    except ValueError:
        raise JobError(f"--ids must be comma-separated integers, got {ids_text!r}") from None
    with torch.no_grad():
        out = model_lib.logits(params, config, torch.tensor([ids], dtype=torch.int64))[0]
    EVENTS.write(json.dumps({"logits": out.tolist()}) + "\n")
    EVENTS.flush()
    return 0


def write_initial_model(out: str, config_text: str, seed: int) -> int:
    try:
        config = model_lib.check_config(json.loads(config_text))
    except (json.JSONDecodeError, ValueError) as error:
        raise JobError(f"--config: {error}") from None
    write_atomically(out, model_lib.encode_model(model_lib.init_params(config, seed), config, {"kind": "bytes", "version": 1}))
    EVENTS.write(json.dumps({"model": out, "sha256": sha256_file(out)}) + "\n")
    EVENTS.flush()
    return 0


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", help="job file (docs/trainer-protocol.md)")
    parser.add_argument("--logits", metavar="MODEL", help="print the logits of MODEL for --ids")
    parser.add_argument("--ids", help="comma-separated token ids, for --logits")
    parser.add_argument("--init", metavar="MODEL", help="write a freshly initialised model (with --config, --seed)")
    parser.add_argument("--config", help="ModelConfig JSON, for --init")
    parser.add_argument("--seed", type=int, default=0, help="seed, for --init")
    args = parser.parse_args(argv)
    threads = os.environ.get("DACP_TORCH_THREADS", "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            print(f"dacp-trainer: DACP_TORCH_THREADS must be a positive integer, got {threads!r}", file=sys.stderr)
            return 2
        torch.set_num_threads(int(threads))
    try:
        if args.logits:
            return print_logits(args.logits, args.ids or "")
        if args.init:
            return write_initial_model(args.init, args.config or "", args.seed)
        if not args.job:
            parser.error("give --job JOB.json (or --logits / --init)")
        return train(read_job(args.job))
    except (JobError, ValueError, OSError) as error:
        print(f"dacp-trainer: {error}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as error:  # divergence: dacp reads "training diverged at step N" and fails the run once
        print(f"dacp-trainer: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
