"""The GPT of ml/model.ts in PyTorch, and the dacp model file (ml/modelFile.ts).

token + learned position embeddings → nLayers pre-LayerNorm blocks (causal multi-head
self-attention, tanh-GELU MLP) → final LayerNorm → logits through the transposed token
embedding. Weights are plain tensors named as in parameterSpecs, laid out [in, out] (y = x @ W + b),
so a file written by either engine loads in the other unchanged. No dropout.
"""

import json
import math

import torch
import torch.nn.functional as F

import dacp_safetensors as safetensors
from dacp_data import derive_seed, normal_array

MODEL_FORMAT = "dacp-gpt/1"
CONFIG_KEYS = ("vocabSize", "contextLength", "dModel", "nLayers", "nHeads")
LAYER_NORM_EPSILON = 1e-5


def check_config(config) -> dict:
    """The ModelConfig, keys in ml/model.ts order (so its JSON is spelled as the TS side spells it)."""
    if not isinstance(config, dict) or set(config) != set(CONFIG_KEYS):
        raise ValueError(f"model config must have exactly the keys {', '.join(CONFIG_KEYS)}, got {config!r}")
    if not all(isinstance(config[k], int) and not isinstance(config[k], bool) and config[k] > 0 for k in CONFIG_KEYS):
        raise ValueError(f"model config values must be positive integers, got {config!r}")
    if config["dModel"] % config["nHeads"] != 0:
        raise ValueError(f"model config: dModel {config['dModel']} must be divisible by nHeads {config['nHeads']}")
    return {k: config[k] for k in CONFIG_KEYS}


def parameter_specs(config: dict) -> list:
    """(name, shape, init, decay) for every parameter, in ml/model.ts parameterSpecs order."""
    V, T, C, L = config["vocabSize"], config["contextLength"], config["dModel"], config["nLayers"]
    weight = ("normal", 0.02)
    residual = ("normal", 0.02 / math.sqrt(2 * L))  # GPT-2: projections into the residual stream
    zeros, ones = ("zeros",), ("ones",)
    specs = [("wte", [V, C], weight, True), ("wpe", [T, C], weight, True)]
    for l in range(L):
        h = f"h.{l}"
        specs += [
            (f"{h}.ln1.gamma", [C], ones, False),
            (f"{h}.ln1.beta", [C], zeros, False),
            (f"{h}.attn.wqkv", [C, 3 * C], weight, True),
            (f"{h}.attn.bqkv", [3 * C], zeros, False),
            (f"{h}.attn.wo", [C, C], residual, True),
            (f"{h}.attn.bo", [C], zeros, False),
            (f"{h}.ln2.gamma", [C], ones, False),
            (f"{h}.ln2.beta", [C], zeros, False),
            (f"{h}.mlp.wfc", [C, 4 * C], weight, True),
            (f"{h}.mlp.bfc", [4 * C], zeros, False),
            (f"{h}.mlp.wproj", [4 * C, C], residual, True),
            (f"{h}.mlp.bproj", [C], zeros, False),
        ]
    specs += [("lnf.gamma", [C], ones, False), ("lnf.beta", [C], zeros, False)]
    return specs


def init_params(config: dict, seed: int) -> dict:
    """The weights GPT.create(config, seed) makes: each normal tensor from mulberry32(deriveSeed(seed, name))."""
    params = {}
    for name, shape, init, _ in parameter_specs(config):
        size = math.prod(shape)
        if init[0] == "normal":
            values = normal_array(derive_seed(seed, name), size, init[1])
        else:
            values = torch.full((size,), 1.0 if init[0] == "ones" else 0.0, dtype=torch.float32)
        params[name] = values.reshape(shape)
    return params


def logits(params: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """ids [B,T] (T ≤ contextLength) → logits [B,T,V]."""
    B, T = ids.shape
    if T > config["contextLength"]:
        raise ValueError(f"sequence length {T} exceeds the model's contextLength {config['contextLength']}")
    wte = params["wte"]
    x = F.embedding(ids, wte) + params["wpe"][:T]  # [B,T,C]
    for l in range(config["nLayers"]):
        h = f"h.{l}"
        x = x + _attention(params, h + ".attn", _layer_norm(params, h + ".ln1", x), config["nHeads"])
        x = x + _mlp(params, h + ".mlp", _layer_norm(params, h + ".ln2", x))
    x = _layer_norm(params, "lnf", x)
    return x @ wte.t()  # tied head: [B,T,C]·[C,V]


def loss(params: dict, config: dict, inputs, targets, mask=None) -> torch.Tensor:
    """Mean cross-entropy over positions where mask == 1 (all positions when mask is None)."""
    out = logits(params, config, inputs)
    nll = F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1), reduction="none")  # [B*T]
    if mask is None:
        return nll.mean()
    weights = mask.reshape(-1)
    return (nll * weights).sum() / weights.sum().clamp(min=1)


def _dense(params: dict, x: torch.Tensor, w: str, b: str) -> torch.Tensor:
    return x @ params[w] + params[b]  # [B,T,In]·[In,Out] + [Out]


def _layer_norm(params: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    C = x.shape[-1]
    return F.layer_norm(x, (C,), params[prefix + ".gamma"], params[prefix + ".beta"], LAYER_NORM_EPSILON)


def _attention(params: dict, prefix: str, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, C = x.shape
    D = C // n_heads
    qkv = _dense(params, x, prefix + ".wqkv", prefix + ".bqkv")  # [B,T,3C]: q | k | v, each C wide
    q, k, v = (t.reshape(B, T, n_heads, D).transpose(1, 2) for t in qkv.split(C, dim=2))  # 3 × [B,H,T,D]
    # softmax(q·kᵀ/√D + causal mask)·v; the built-in engine masks with -1e9, which underflows to the same 0.
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B,H,T,D]
    merged = y.transpose(1, 2).reshape(B, T, C)
    return _dense(params, merged, prefix + ".wo", prefix + ".bo")


def _mlp(params: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    hidden = F.gelu(_dense(params, x, prefix + ".wfc", prefix + ".bfc"), approximate="tanh")  # [B,T,4C]
    return _dense(params, hidden, prefix + ".wproj", prefix + ".bproj")


def compact_json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_model(params: dict, config: dict, tokenizer: dict) -> bytes:
    """The dacp model file; the same bytes ml/modelFile.ts serializeModel writes for the same weights."""
    tensors = {name: tensor.detach() for name, tensor in params.items()}
    metadata = {
        "format": MODEL_FORMAT,
        "dacp.config": compact_json(check_config(config)),
        "dacp.tokenizer": compact_json(tokenizer),
        "dacp.sha256": safetensors.tensors_digest(tensors),
    }
    return safetensors.encode(tensors, metadata)


def decode_model(buf: bytes, what: str = "model file"):
    """→ (params, config, tokenizer); checks the format, the digest and every parameter's shape."""
    tensors, metadata = safetensors.decode(buf)
    found = metadata.get("format")
    if found != MODEL_FORMAT:
        raise ValueError(f"{what}: metadata format is {'missing' if found is None else repr(found)}, expected {MODEL_FORMAT!r}")
    digest = metadata.get("dacp.sha256")
    if digest is not None and digest != safetensors.tensors_digest(tensors):
        raise ValueError(f"{what}: tensor data does not match its sha256 (dacp.sha256); the file is corrupted")
    try:
        config = check_config(json.loads(metadata["dacp.config"]))
        tokenizer = json.loads(metadata["dacp.tokenizer"])
    except KeyError as missing:
        raise ValueError(f"{what}: metadata {missing} is missing") from None
    except json.JSONDecodeError:
        raise ValueError(f"{what}: metadata dacp.config or dacp.tokenizer is not JSON") from None
    problems = []
    specs = parameter_specs(config)
    for name, shape, _, _ in specs:
        if name not in tensors:
            problems.append(f'missing "{name}"')
        elif list(tensors[name].shape) != shape:
            problems.append(f'"{name}" has shape {list(tensors[name].shape)}, expected {shape}')
    known = {spec[0] for spec in specs}
    problems += [f'unexpected "{name}"' for name in tensors if name not in known]
    if problems:
        raise ValueError(f"{what}: weights do not match the model config {compact_json(config)}: {'; '.join(problems[:5])}")
    return {spec[0]: tensors[spec[0]] for spec in specs}, config, tokenizer
