#!/usr/bin/env python3
"""dacp's Hugging Face engine: docs/trainer-protocol.md (dacp-trainer/2) with transformers + PyTorch.

    python dacp_hf_trainer.py --job JOB.json                          one process
    python -m torch.distributed.run --standalone --nproc_per_node=N dacp_hf_trainer.py --job JOB.json
                                                                      N processes (DDP); rank 0 speaks

A model folder in (config.json, model.safetensors, tokenizer files), a model folder out. Full
fine-tuning or LoRA (peft, merged into a plain folder on export), bf16 autocast on CUDA, gradient
checkpointing as a setting. Batches, the optimizer's constants and the learning-rate schedule are
those of the built-in engine (ml/train.ts, ml/mixing.ts); checkpoints hold the model (or the
adapter), the optimizer, the scheduler, the RNG states and the step, so a resumed run continues
exactly. The trainer watches the dacp worker that started it and exits within a second or two of
its death, so an orphan never holds the memory the next attempt needs.
"""

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import time

# Events go to the real stdout, kept as a private copy of file descriptor 1; everything else that
# writes there (Python's print, native libraries such as NCCL) lands on stderr.
EVENTS = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

STOP_REQUESTED = False


def _request_stop(signum, _frame):
    global STOP_REQUESTED
    STOP_REQUESTED = True
    print(f"dacp-hf: received signal {signum}; stopping after the current step", file=sys.stderr, flush=True)


signal.signal(signal.SIGTERM, _request_stop)
signal.signal(signal.SIGINT, _request_stop)


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dacp_hf_common import sha256_file, start_parent_watch  # noqa: E402

start_parent_watch("dacp-hf")

import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from dacp_data import lm_batches, read_sft_examples, read_token_stream, sft_batches  # noqa: E402

PROTOCOL = "dacp-trainer/2"
# How several processes share the work: DDP (a whole model per process) or FSDP (each process holds
# a shard of the weights, gradients and optimizer state, for models that do not fit one device).
PARALLEL = ("ddp", "fsdp")
STAGES = ("bootstrap", "dacp", "instruct")
# A job without "hf" (any other trainer's job) gets these: full fine-tuning in float32 or bf16 autocast.
HF_DEFAULTS = {"lora": None, "gradientCheckpointing": False, "precision": "auto", "parallel": "ddp"}
CHECKPOINT_FORMAT = "dacp-hf-checkpoint/1"
ADAM = {"beta1": 0.9, "beta2": 0.95, "epsilon": 1e-8}  # ml/train.ts ADAM
PROGRESS_SECONDS = 2.0
SETTING_KEYS = ("totalSteps", "batchSize", "learningRate", "warmupSteps", "minLrRatio", "weightDecay", "gradClip", "seed")
# Files of a model folder that are not weights: copied from the input folder to the output one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


class JobError(Exception):
    """A problem with the job the user can fix; reported as one line, exit code 2."""


class Diverged(Exception):
    pass


RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))


def emit(event: str, **fields) -> None:
    if RANK != 0:
        return
    EVENTS.write(json.dumps({"event": event, **fields}, allow_nan=False) + "\n")
    EVENTS.flush()


def say(message: str) -> None:
    print(f"dacp-hf[{RANK}]: {message}" if WORLD > 1 else f"dacp-hf: {message}", file=sys.stderr, flush=True)


def learning_rate_at(settings: dict, step: int) -> float:
    """ml/train.ts learningRateAt: linear warm-up over warmupSteps, then cosine to minLrRatio × peak."""
    peak, warmup, total = settings["learningRate"], settings["warmupSteps"], settings["totalSteps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1, (step - warmup) / max(1, total - warmup))
    floor = peak * settings["minLrRatio"]
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


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
    for key in ("initModelDir", "contextLength", "data", "settings", "checkpointEvery", "checkpointDir", "outputModelDir"):
        need(key in job, f'"{key}" is missing')
    settings = job["settings"]
    need(isinstance(settings, dict) and all(k in settings for k in SETTING_KEYS), f'"settings" needs {", ".join(SETTING_KEYS)}')
    need(all(isinstance(settings[k], int) and settings[k] > 0 for k in ("totalSteps", "batchSize")),
         "settings.totalSteps and settings.batchSize must be positive integers")
    need(isinstance(job["contextLength"], int) and job["contextLength"] > 0, '"contextLength" must be a positive integer')
    need(settings["batchSize"] >= WORLD, f"settings.batchSize {settings['batchSize']} is smaller than the {WORLD} processes; "
         "every process needs at least one row of each batch (raise batchSize or lower engine.processes)")
    need(isinstance(job["checkpointEvery"], int) and job["checkpointEvery"] >= 1, '"checkpointEvery" must be a positive integer')
    need(isinstance(job["data"], dict) and job["data"].get("kind") in ("lm", "sft"), 'data.kind must be "lm" or "sft"')
    hf = job.setdefault("hf", dict(HF_DEFAULTS))
    need(isinstance(hf, dict), '"hf" must be an object')
    need(hf.get("precision", "auto") in ("auto", "fp32", "bf16"), 'hf.precision must be "auto", "fp32" or "bf16"')
    need(hf.get("parallel", "ddp") in PARALLEL, 'hf.parallel must be "ddp" or "fsdp"')
    lora = hf.get("lora")
    if lora is not None:
        need(isinstance(lora, dict) and isinstance(lora.get("r"), int) and lora["r"] > 0, "hf.lora.r must be a positive integer")
        need(isinstance(lora.get("targetModules"), list) and all(isinstance(m, str) for m in lora["targetModules"]),
             "hf.lora.targetModules must be a list of module names")
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
             f"data.replayRatio is {ratio} but data.replay names no token file; give one or set replayRatio to 0")
    return job


def batch_source(job: dict, vocab_size: int):
    data, settings, T = job["data"], job["settings"], job["contextLength"]
    if data["kind"] == "lm":
        parts = [(p["name"], read_token_stream(p["tokens"], vocab_size), float(p["weight"])) for p in data["domainParts"]] \
            if "domainParts" in data else None
        domain = read_token_stream(data["domain"], vocab_size) if parts is None else torch.zeros(0, dtype=torch.int64)
        return lm_batches(domain, read_token_stream(data["replay"], vocab_size), float(data["replayRatio"]),
                          settings["batchSize"], T, settings["seed"], parts)
    replay = read_token_stream(data["replay"], vocab_size) if data.get("replay") else None
    return sft_batches(read_sft_examples(data["examples"], vocab_size), settings["batchSize"], T, settings["seed"],
                       int(data["padId"]), int(data["eosId"]), replay, float(data.get("replayRatio", 0)))


def device_and_precision(hf: dict):
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    wanted = hf.get("precision", "auto")
    if wanted == "bf16" and device.type != "cuda":
        raise JobError("hf.precision is bf16 but no CUDA device is visible; use auto or fp32 on a CPU")
    bf16 = device.type == "cuda" and wanted in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    return device, bf16


def build_model(job: dict, device):
    from transformers import AutoModelForCausalLM

    hf = job["hf"]
    model = AutoModelForCausalLM.from_pretrained(job["initModelDir"], torch_dtype=torch.float32, local_files_only=True)
    model.config.use_cache = False
    if hf.get("gradientCheckpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = hf.get("lora")
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        if hf.get("gradientCheckpointing"):
            model.enable_input_require_grads()
        config = LoraConfig(r=lora["r"], lora_alpha=lora.get("alpha", 2 * lora["r"]), lora_dropout=lora.get("dropout", 0.0),
                            target_modules=lora["targetModules"], bias="none", task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, config)
        except ValueError as error:
            raise JobError(f"hf.lora: {error}") from None
    return model.to(device)


def make_optimizer(model, settings: dict):
    """AdamW with the built-in engine's constants; decoupled decay on matrices and embeddings only."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": settings["weightDecay"]},
        {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings["learningRate"], betas=(ADAM["beta1"], ADAM["beta2"]),
                                  eps=ADAM["epsilon"], foreach=False)
    peak = settings["learningRate"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_at(settings, step) / peak)
    return [p for _, p in trainable], optimizer, scheduler


def trainable_state(model) -> dict:
    """What a checkpoint keeps of the model: the adapter under LoRA, else every weight."""
    base = model.module if hasattr(model, "module") else model
    if hasattr(base, "peft_config"):
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(base).items()}
    return {k: v.detach().cpu().clone() for k, v in base.state_dict().items()}


def load_trainable_state(model, state: dict) -> None:
    base = model.module if hasattr(model, "module") else model
    if hasattr(base, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(base, state)
    else:
        base.load_state_dict(state, strict=True)


def shard(model):
    """FSDP (torch's fully_shard): each decoder layer is one unit, the rest (embeddings, head) the root."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "peft_config") else model
    layers = set(getattr(base, "_no_split_modules", None) or [])
    if not layers:
        raise JobError(f"hf.parallel fsdp: {type(base).__name__} names no layers to shard (_no_split_modules); use ddp")
    for module in list(model.modules()):
        if type(module).__name__ in layers:
            fully_shard(module)
    fully_shard(model)
    return model


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gathered_state(model, lora: bool) -> dict:
    """Under FSDP: the whole model's weights on rank 0 (every rank must call it), the adapter's only under LoRA."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = get_model_state_dict(model, options=_full_options())
    return {k: v for k, v in state.items() if k in trainable} if lora else state


def load_sharded_state(model, optimizer, state: dict, lora: bool) -> None:
    """Under FSDP: every rank reads the checkpoint (one host) and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, strict=not lora)
    set_model_state_dict(model, state["model"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str, state: dict):
    """step-N.pt in folder, written to a temp file (never whole in memory), fsynced and renamed; → (path, sha256)."""
    path = os.path.abspath(os.path.join(folder, f"step-{state['step']}.pt"))
    temp = f"{path}.tmp-{os.getpid()}"
    with open(temp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    return path, sha256_file(path)


def load_checkpoint(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise JobError(f"resumeFrom {path} is not a readable checkpoint of this trainer ({error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise JobError(f"resumeFrom {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return state


def write_output(model, job: dict, sharded: bool):
    """The trained model as a plain folder: LoRA merged in, weights as safetensors, the tokenizer files copied.

    Under FSDP every rank takes part in gathering the weights; rank 0 loads them into a plain copy of
    the model on the CPU and writes that. Returns the folder on rank 0, None on the others."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_full_options())
        if RANK != 0:
            return None
        model = build_model({**job, "hf": {**job["hf"], "gradientCheckpointing": False}}, torch.device("cpu"))
        model.load_state_dict(state, strict=True)
    out = job["outputModelDir"]
    temp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    base = model.module if hasattr(model, "module") else model
    if hasattr(base, "peft_config"):
        base = base.merge_and_unload()
    base.config.use_cache = True
    base.save_pretrained(temp, safe_serialization=True)
    for name in TOKENIZER_FILES:
        source = os.path.join(job["initModelDir"], name)
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(temp, name))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(temp, out)
    return out


def train(job: dict) -> int:
    settings = {k: job["settings"][k] for k in SETTING_KEYS}
    if os.environ.get("DACP_DETERMINISTIC") == "1":
        # Bit-for-bit on a GPU too (scripts/gpu-check.sh), at some cost in speed; the CPU is deterministic anyway.
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    distributed = WORLD > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", WORLD))))
    device, bf16 = device_and_precision(job["hf"])
    sharded = distributed and job["hf"].get("parallel", "ddp") == "fsdp"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    lora = job["hf"].get("lora")
    method = "full fine-tuning" if lora is None else "LoRA r={} on {}".format(lora["r"], ", ".join(lora["targetModules"]))
    checkpointing = ", gradient checkpointing" if job["hf"].get("gradientCheckpointing") else ""
    where = "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible})"
    parallel = f", {'FSDP' if sharded else 'DDP'}" if distributed else ""
    say(f"device {device}{where}, {'bf16 autocast' if bf16 else 'float32'}, {method}{checkpointing}, {WORLD} process(es){parallel}")
    torch.manual_seed(settings["seed"])
    random.seed(settings["seed"])
    model = build_model(job, device)
    vocab_size = int(model.config.vocab_size)
    lora_on = job["hf"].get("lora") is not None
    if sharded:
        model = shard(model)  # before the optimizer: it must hold the sharded parameters
    params, optimizer, scheduler = make_optimizer(model, settings)
    step, last_loss = 0, float("nan")
    if job.get("resumeFrom"):
        state = load_checkpoint(job["resumeFrom"])
        if state["settings"] != settings or state.get("lora") != job["hf"].get("lora"):
            raise JobError(f"checkpoint {job['resumeFrom']} was written for other settings; it cannot continue this job")
        if bool(state.get("sharded", False)) != sharded:
            raise JobError(f"checkpoint {job['resumeFrom']} was written {'with' if state.get('sharded') else 'without'} FSDP; "
                           "resume it with the same hf.parallel and processes")
        if sharded:
            load_sharded_state(model, optimizer, state, lora_on)
        else:
            load_trainable_state(model, state["model"])
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) != WORLD:
            say(f"checkpoint {job['resumeFrom']} was written by {len(rngs)} process(es), this run has {WORLD}: the random state is not continued exactly")
        restore_rng(rngs[RANK % len(rngs)])
        step, last_loss = int(state["step"]), float(state["lastLoss"])
        say(f"resumed from {job['resumeFrom']} at step {step}")
    if distributed and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    batches = batch_source(job, vocab_size)
    if RANK == 0:
        os.makedirs(job["checkpointDir"], exist_ok=True)

    total, every, batch_size = settings["totalSteps"], job["checkpointEvery"], settings["batchSize"]
    tokens_per_step = batch_size * job["contextLength"]
    tokens = 0
    checkpointed = None
    last_progress = time.monotonic()

    def checkpoint() -> None:
        nonlocal checkpointed, last_progress
        # Every rank's random state (they differ: each draws for its own rows), gathered to rank 0.
        rngs = [None] * WORLD
        if distributed:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if sharded:  # collectives: every rank gathers, rank 0 receives the whole
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            model_state = gathered_state(model, lora_on)
            optimizer_state = get_optimizer_state_dict(model, optimizer, options=_full_options())
        elif RANK == 0:
            model_state, optimizer_state = trainable_state(model), optimizer.state_dict()
        if RANK == 0:
            path, digest = save_checkpoint(job["checkpointDir"], {
                "step": step, "lastLoss": last_loss, "settings": settings, "lora": job["hf"].get("lora"),
                "model": model_state, "optimizer": optimizer_state, "sharded": sharded,
                "scheduler": scheduler.state_dict(), "rng": rngs, "world": WORLD,
            })
            emit("progress", step=step, loss=_finite(last_loss), tokens=tokens)
            emit("checkpoint", step=step, path=path, sha256=digest)
        checkpointed, last_progress = step, time.monotonic()

    while step < total:
        stop = STOP_REQUESTED
        if distributed:  # every rank stops at the same step
            flag = torch.tensor([1.0 if stop else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            if checkpointed != step:
                checkpoint()
            say(f"stopped at step {step} of {total}")
            return 0
        inputs, targets, mask = batches(step)
        # This rank's rows of the global batch; the loss is scaled so that DDP's mean of the ranks'
        # gradients is the gradient of the global batch's mean loss, however the rows divide.
        rows = slice(RANK, batch_size, WORLD)
        weights = torch.ones(targets.shape, dtype=torch.float32) if mask is None else mask.to(torch.float32)
        total_weight = float(weights.sum().clamp(min=1))
        x, y, w = inputs[rows].to(device), targets[rows].to(device), weights[rows].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        local_sum = (nll * w.reshape(-1)).sum()
        (local_sum * (WORLD / total_weight)).backward()
        loss_sum = local_sum.detach().clone()
        if distributed:
            dist.all_reduce(loss_sum)
        loss = float(loss_sum) / total_weight
        clip = settings["gradClip"]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise Diverged(f"training diverged at step {step + 1}: loss {loss}, gradient norm {norm}; lower learningRate or gradClip")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last_loss = loss
        tokens += tokens_per_step
        if step % every == 0 or step == total:
            checkpoint()
        elif time.monotonic() - last_progress >= PROGRESS_SECONDS or tokens == tokens_per_step:
            emit("progress", step=step, loss=_finite(last_loss), tokens=tokens)
            last_progress = time.monotonic()

    out = write_output(model, job, sharded)
    if RANK == 0:
        weights_file = os.path.join(out, "model.safetensors")
        if not os.path.exists(weights_file):
            weights_file = os.path.join(out, "model.safetensors.index.json")
        emit("done", step=step, loss=_finite(last_loss), model=out, sha256=sha256_file(weights_file))
    if distributed:
        dist.barrier()
    return 0


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", required=True, help="job file (docs/trainer-protocol.md, dacp-trainer/2)")
    args = parser.parse_args(argv)
    if RANK != 0:
        global EVENTS
        EVENTS = sys.stderr  # only rank 0 speaks the protocol
    threads = os.environ.get("DACP_TORCH_THREADS", "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            say(f"DACP_TORCH_THREADS must be a positive integer, got {threads!r}")
            return 2
        torch.set_num_threads(int(threads))
    try:
        return train(read_job(args.job))
    except (JobError, ValueError, OSError) as error:
        say(str(error))
        return 2
    except Diverged as error:  # dacp reads "training diverged at step N" and fails the run once
        say(str(error))
        return 1
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
