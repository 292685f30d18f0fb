#!/usr/bin/env python3
"""The PyTorch CPU reference for `npm run bench:train`: a plain training loop with transformers.

    .tools/venv/bin/python scripts/bench-hf-reference.py < request.json

request: {"family": "llama" | "gpt2", "config": {vocabSize, contextLength, dModel, nLayers, nHeads, nKvHeads?, ffnDim?},
          "tokens": FILE (little-endian int32 ids), "batchSize": int, "steps": int, "warmup": int, "threads": int}
   or:   {"gemm": true, "threads": int}  -> {"flopsPerSec": float}: fp32 matrix-product throughput, the host's practical peak
answer:  {"tokensPerSec": float, "parameters": int}   (one JSON line on stdout)

The model is built from the config alone (random weights), trained in float32 with torch.optim.AdamW on
random windows of the tokens; warm-up steps are not timed.
"""
import json
import os
import sys
import time
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")


def fail(message):
    print(f"bench-hf-reference: {message}", file=sys.stderr)
    sys.exit(2)


def gemm(threads):
    import torch

    torch.set_num_threads(threads)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    repeats = 20
    for _ in range(repeats):
        a @ b
    return {"flopsPerSec": 2 * n ** 3 * repeats / (time.perf_counter() - started)}


def train(request):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(int(request.get("threads", os.cpu_count() or 1)))
    torch.manual_seed(0)
    c = request["config"]
    if request["family"] == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=c["vocabSize"], hidden_size=c["dModel"], intermediate_size=c["ffnDim"],
            num_hidden_layers=c["nLayers"], num_attention_heads=c["nHeads"], num_key_value_heads=c["nKvHeads"],
            max_position_embeddings=c["contextLength"], tie_word_embeddings=False, attn_implementation="eager"))
    elif request["family"] == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=c["vocabSize"], n_embd=c["dModel"], n_layer=c["nLayers"], n_head=c["nHeads"],
            n_positions=c["contextLength"], resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, attn_implementation="eager"))
    else:
        fail(f'family must be "llama" or "gpt2", got {request["family"]!r}')
    model.train()
    with open(request["tokens"], "rb") as f:
        tokens = torch.frombuffer(bytearray(f.read()), dtype=torch.int32).to(torch.int64)
    T, B = c["contextLength"], request["batchSize"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(1)

    def step():
        starts = torch.randint(0, len(tokens) - T - 1, (B,), generator=generator)
        rows = torch.stack([tokens[s:s + T + 1] for s in starts.tolist()])
        loss = model(input_ids=rows[:, :-1], labels=rows[:, :-1]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(request["warmup"]):
        step()
    started = time.perf_counter()
    for _ in range(request["steps"]):
        step()
    seconds = time.perf_counter() - started
    return {"tokensPerSec": request["steps"] * B * T / seconds, "parameters": sum(p.numel() for p in model.parameters())}


def main():
    try:
        request = json.load(sys.stdin)
    except ValueError as error:
        fail(f"stdin is not JSON: {error}")
    answer = gemm(int(request.get("threads", os.cpu_count() or 1))) if request.get("gemm") else train(request)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
