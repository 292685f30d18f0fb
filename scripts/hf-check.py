#!/usr/bin/env python3
"""Asks transformers about a Hugging Face model folder, for the TypeScript tests.

    .tools/venv/bin/python scripts/hf-check.py DIR MODE < request.json > answer.json

Reads one JSON object on stdin and prints one JSON object (one line) on stdout; anything else that is
printed or warned goes to stderr. MODE is one of:
  tokenize  {"texts": [str, ...]}               -> {"ids": [[int, ...], ...]}
            AutoTokenizer, add_special_tokens=False
  chat      {"prompts": [str, ...]}             -> {"ids": [[int, ...], ...] | null}
            apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True);
            null when tokenizer_config.json has no chat template
  logits    {"ids": [int, ...]}                 -> {"logits": [[float, ...], ...]}   (one row per position)
            AutoModelForCausalLM in float32, eval mode, no grad
  generate  {"prompt": str, "maxNewTokens": int} -> {"text": str, "ids": [int, ...], "promptIds": [int, ...]}
            greedy model.generate (do_sample=False); ids/text are the new tokens only. Optional:
            "promptIds": [int, ...] instead of "prompt"; "addSpecialTokens" (default true, as tokenizer(prompt)
            does: the llama fixture then starts with <s>); "skipSpecialTokens" for the decode (default false)
  describe  {}                                  -> {"model_type": str, "architectures": [str], "parameters": int,
                                                    "dtype": str}
            dtype is the weights' dtype as stored (config "dtype"/"torch_dtype"), e.g. "float32", "bfloat16"
  batch     (DIR is "-") {"calls": [{"dir": DIR, "mode": MODE, "request": {...}}, ...]} -> {"answers": [...]}
            several calls in one process
Errors: one line on stderr ("hf-check: ...") and exit code 2. Needs the venv from scripts/setup-python.sh.
"""
import json
import os
import sys

os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import warnings

# e.g. torch's "Failed to initialize NumPy" / numpy ABI notes, and transformers' deprecation notes
warnings.filterwarnings("ignore", message=".*[Nn]um[Pp]y.*")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

MODES = ("tokenize", "chat", "logits", "generate", "describe")


def fail(message):
    print("hf-check: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def int_list(request, key, allow_empty=False):
    value = request.get(key)
    if not isinstance(value, list) or not all(is_int(v) for v in value):
        fail(f'"{key}" must be a list of integers')
    if not value and not allow_empty:
        fail(f'"{key}" must not be empty')
    return value


def check_ids(ids, vocab_size, key):
    bad = [i for i in ids if i < 0 or i >= vocab_size]
    if bad:
        fail(f'"{key}" has ids outside 0..{vocab_size - 1}: {bad[:5]}')


def max_positions(config):
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if is_int(value):
            return value
    return None


def load_model(directory, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    model.eval()
    return model


def run(directory, mode, request):
    import torch

    torch.set_num_threads(1)  # small models; one thread keeps results identical run to run

    if mode == "tokenize":
        from transformers import AutoTokenizer

        texts = request.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            fail('"texts" must be a list of strings')
        tokenizer = AutoTokenizer.from_pretrained(directory)
        if not texts:
            return {"ids": []}
        return {"ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    if mode == "chat":
        from transformers import AutoTokenizer

        prompts = request.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            fail('"prompts" must be a list of strings')
        tokenizer = AutoTokenizer.from_pretrained(directory)
        if not tokenizer.chat_template:
            return {"ids": None}
        return {"ids": [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                           tokenize=True)) for p in prompts]}

    if mode == "describe":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        model = load_model(directory, "auto")
        return {
            "model_type": config.model_type,
            "architectures": list(config.architectures or [type(model).__name__]),
            "parameters": int(model.num_parameters()),
            "dtype": str(stored).replace("torch.", ""),
        }

    model = load_model(directory, torch.float32)
    vocab_size = model.config.vocab_size
    limit = max_positions(model.config)

    if mode == "logits":
        ids = int_list(request, "ids")
        check_ids(ids, vocab_size, "ids")
        if limit is not None and len(ids) > limit:
            fail(f'"ids" has {len(ids)} tokens; the model takes at most {limit}')
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0]
        return {"logits": logits.float().tolist()}

    # generate
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    new_tokens = request.get("maxNewTokens")
    if not is_int(new_tokens) or new_tokens < 1:
        fail('"maxNewTokens" must be an integer ≥ 1')
    if "promptIds" in request:
        prompt_ids = int_list(request, "promptIds")
    else:
        prompt = request.get("prompt")
        if not isinstance(prompt, str):
            fail('"prompt" must be a string (or give "promptIds")')
        add_special = request.get("addSpecialTokens", True)
        if not isinstance(add_special, bool):
            fail('"addSpecialTokens" must be true or false')
        prompt_ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        if not prompt_ids:
            fail("the prompt encodes to no tokens; give a non-empty prompt or addSpecialTokens: true")
    check_ids(prompt_ids, vocab_size, "promptIds")
    if limit is not None and len(prompt_ids) + new_tokens > limit:
        fail(f"{len(prompt_ids)} prompt tokens + maxNewTokens {new_tokens} exceed the model's {limit} positions")
    skip_special = request.get("skipSpecialTokens", False)
    if not isinstance(skip_special, bool):
        fail('"skipSpecialTokens" must be true or false')
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = model.generation_config.eos_token_id
    if isinstance(pad_id, list):
        pad_id = pad_id[0]
    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
            do_sample=False, num_beams=1, pad_token_id=pad_id,
        )
    ids = output[0, len(prompt_ids):].tolist()
    text = tokenizer.decode(ids, skip_special_tokens=skip_special, clean_up_tokenization_spaces=False)
    return {"text": text, "ids": ids, "promptIds": prompt_ids}


def check_folder(directory, mode):
    if mode not in MODES:
        fail(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if not os.path.isdir(directory):
        fail(f"{directory} is not a folder")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        fail(f"{directory} has no config.json; is it a Hugging Face model folder?")


def run_all(directory, mode, request):
    """One call, or (`hf-check.py - batch`) a list of them in one process: importing torch and
    transformers is most of a call's time."""
    if mode != "batch":
        return run(directory, mode, request)
    calls = request.get("calls")
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        fail('"calls" must be a list of {"dir", "mode", "request"}')
    answers = []
    for call in calls:
        check_folder(call.get("dir"), call.get("mode"))
        answers.append(run(call["dir"], call["mode"], call.get("request") or {}))
    return {"answers": answers}


def main():
    if len(sys.argv) != 3:
        fail(f"usage: hf-check.py DIR MODE < request.json (MODE: {', '.join(MODES)}), or hf-check.py - batch")
    directory, mode = sys.argv[1], sys.argv[2]
    if mode != "batch":
        check_folder(directory, mode)
    try:
        request = json.loads(sys.stdin.read() or "null")
    except json.JSONDecodeError as error:
        fail(f"stdin is not JSON: {error}")
    if not isinstance(request, dict):
        fail("stdin must hold one JSON object")

    # Keep stdout for the answer alone: whatever libraries print (Python or native code) goes to stderr.
    sys.stdout.flush()
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        answer = run_all(directory, mode, request)
    except ImportError as error:
        fail(f"{error}; run `bash scripts/setup-python.sh` and use the python it prints")
    except SystemExit:
        raise
    except Exception as error:  # noqa: BLE001 - one line for the caller, not a traceback
        fail(f"{mode} failed for {directory}: {type(error).__name__}: {error}")
    with os.fdopen(answer_fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(answer, ensure_ascii=False, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
