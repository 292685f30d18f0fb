"""Seeded randomness and training batches, the same numbers as ml/random.ts and ml/mixing.ts.

Batches are pure functions of (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have seen, and both engines train on the same rows for the same job.
"""

import json
import math

import torch

M32 = 0xFFFFFFFF
GOLDEN = 0x6D2B79F5  # mulberry32's increment


def _imul(a: int, b: int) -> int:
    return (a * b) & M32


def mulberry32(seed: int):
    """A uniform generator in [0, 1) with 32 bits of state; uint32 arithmetic equals JS's int32 one bit for bit."""
    state = seed & M32

    def uniform() -> float:
        nonlocal state
        state = (state + GOLDEN) & M32
        t = state
        t = _imul(t ^ (t >> 15), t | 1)
        t ^= (t + _imul(t ^ (t >> 7), t | 61)) & M32
        return ((t ^ (t >> 14)) & M32) / 4294967296

    return uniform


def derive_seed(*parts) -> int:
    """FNV-1a over the parts (ints as two little-endian 32-bit words, strings as UTF-8), then an avalanche."""
    h = 0x811C9DC5

    def mix(byte: int) -> None:
        nonlocal h
        h = ((h ^ (byte & 0xFF)) * 0x01000193) & M32

    for part in parts:
        if isinstance(part, int):
            for word in (part & M32, (part // 4294967296) & M32):
                for shift in range(0, 32, 8):
                    mix(word >> shift)
        else:
            for byte in part.encode("utf-8"):
                mix(byte)
        mix(0x1F)
    h ^= h >> 16
    h = _imul(h, 0x85EBCA6B)
    h ^= h >> 13
    h = _imul(h, 0xC2B2AE35)
    return (h ^ (h >> 16)) & M32


def random_int(uniform, n: int) -> int:
    return min(n - 1, math.floor(uniform() * n))


def _imul_tensor(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Low 32 bits of a·b for uint32 values held in int64, without overflowing int64."""
    low = a * (b & 0xFFFF)
    high = ((a * (b >> 16)) & 0xFFFF) << 16
    return (low + high) & M32


def mulberry32_draws(seed: int, count: int) -> torch.Tensor:
    """The first `count` outputs of mulberry32(seed), float64, all at once: draw k depends only on (seed, k)."""
    k = torch.arange(1, count + 1, dtype=torch.int64)
    t = ((seed & M32) + k * GOLDEN) & M32
    t = _imul_tensor(t ^ (t >> 15), t | 1)
    t = t ^ ((t + _imul_tensor(t ^ (t >> 7), t | 61)) & M32)
    return ((t ^ (t >> 14)) & M32).to(torch.float64) / 4294967296


def normal_array(seed: int, size: int, std: float) -> torch.Tensor:
    """N(0, std²) float32 samples by Box–Muller, as ml/random.ts normalArray(mulberry32(seed), size, std)."""
    pairs = (size + 1) // 2
    draws = mulberry32_draws(seed, 2 * pairs).reshape(pairs, 2)
    u1 = 1 - draws[:, 0]
    u2 = draws[:, 1]
    radius = torch.sqrt(-2 * torch.log(u1)) * std
    angle = (2 * math.pi) * u2
    values = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1).reshape(-1)[:size]
    return values.to(torch.float32)


def permutation(uniform, n: int) -> list:
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = random_int(uniform, i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def read_token_stream(path: str, vocab_size: int) -> torch.Tensor:
    """A file of little-endian int32 token ids → int64 tensor; rejects ids outside the vocabulary."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    if len(raw) % 4 != 0:
        raise ValueError(f"token stream {path} has {len(raw)} bytes, not a multiple of 4 (int32 ids)")
    if not raw:
        return torch.zeros(0, dtype=torch.int64)
    ids = torch.frombuffer(raw, dtype=torch.int32).to(torch.int64)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"token stream {path} holds ids {low}..{high}, outside the vocabulary 0..{vocab_size - 1}")
    return ids


def lm_batches(domain: torch.Tensor, replay: torch.Tensor, replay_ratio: float, batch_size: int,
               context_length: int, seed: int, domain_parts=None):
    """Mixed LM batches (ml/mixing.ts mixedLmBatches): round(batchSize × replayRatio) replay rows, the rest domain.

    `domain_parts`, a list of (name, stream, weight), replaces `domain`: each domain row first draws
    its part (probability weight / total), then a window of that part's stream.
    """
    if not 0 <= replay_ratio <= 1:
        raise ValueError(f"replayRatio must be in [0, 1], got {replay_ratio}")
    window = context_length + 1
    if domain_parts is not None:
        draw_domain, domain_tokens = _part_sampler(domain_parts, window)
    else:
        draw_domain, domain_tokens = (lambda uniform: _sample_window(domain, window, uniform)), len(domain)
    if domain_tokens < 2 and len(replay) < 2:
        raise ValueError("both the domain and the replay streams are empty (need ≥ 2 tokens)")
    replay_rows = 0 if len(replay) < 2 else batch_size if domain_tokens < 2 else _js_round(batch_size * replay_ratio)

    def batch(step: int):
        uniform = mulberry32(derive_seed(seed, "lm", step))
        rows = torch.stack([_sample_window(replay, window, uniform) if r < replay_rows else draw_domain(uniform)
                            for r in range(batch_size)])
        return rows[:, :-1], rows[:, 1:], None  # None: every target counts

    return batch


def _part_sampler(parts, window: int):
    """Draws a domain part by weight, then a window of it (ml/mixing.ts partSampler)."""
    for name, stream, weight in parts:
        if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0):
            raise ValueError(f'domain part "{name}": weight must be a number ≥ 0, got {weight!r}')
        if weight > 0 and len(stream) < 2:
            raise ValueError(f'domain part "{name}" has weight {weight} but no text (need ≥ 2 tokens)')
    total = sum(weight for _, _, weight in parts)
    if not total > 0:
        raise ValueError("domain parts: give at least one a weight above 0")
    weighted = [(stream, weight) for _, stream, weight in parts if weight > 0]
    bounds, running = [], 0.0
    for _, weight in weighted:
        running += weight / total
        bounds.append(running)
    bounds[-1] = 1.0

    def draw(uniform):
        u = uniform()
        index = next(i for i, b in enumerate(bounds) if u < b)
        return _sample_window(weighted[index][0], window, uniform)

    return draw, sum(len(stream) for _, stream, _ in parts)


def _sample_window(stream: torch.Tensor, window: int, uniform) -> torch.Tensor:
    """`window` consecutive tokens at a random offset (ml/mixing.ts sampleWindow); a shorter stream is read cyclically."""
    n = len(stream)
    if n >= window:
        start = random_int(uniform, n - window + 1)
        return stream[start:start + window]
    start = random_int(uniform, n)
    return stream[(start + torch.arange(window)) % n]


def _js_round(x: float) -> int:
    """Math.round: halves go up (Python's round() goes to even)."""
    return math.floor(x + 0.5)


def read_sft_examples(path: str, vocab_size: int) -> list:
    examples = []
    with open(path, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompt, response = record["prompt"], record["response"]
                ok = all(isinstance(i, int) and 0 <= i < vocab_size for i in prompt + response)
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok:
                raise ValueError(f'{path}:{number}: expected {{"prompt": [ids], "response": [ids]}} with ids in 0..{vocab_size - 1}')
            examples.append((prompt, response))
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def sft_row(prompt: list, response: list, context_length: int, pad_id: int, eos_id: int):
    """prompt + response + eos, padded or cut to contextLength + 1 (ml/mixing.ts sftRow); mask = response/eos targets."""
    window = context_length + 1
    answer = response + [eos_id]
    prompt_budget = max(window - len(answer), math.ceil(window / 2))
    if len(prompt) > prompt_budget:
        prompt = prompt[len(prompt) - prompt_budget:]
    sequence = (prompt + answer)[:window]
    used = len(sequence)
    sequence = sequence + [pad_id] * (window - used)
    mask = [1.0 if len(prompt) <= t + 1 < used else 0.0 for t in range(context_length)]
    return sequence[:-1], sequence[1:], mask


def sft_replay_rows(batch_size: int, replay, replay_ratio: float) -> int:
    """Replay rows per SFT batch (ml/mixing.ts sftReplayRows): round(batchSize × ratio), at most batchSize − 1."""
    if not 0 <= replay_ratio < 1:
        raise ValueError(f"replayRatio must be in [0, 1) so every batch keeps instruction pairs, got {replay_ratio}")
    if replay_ratio == 0:
        return 0
    if replay is None:
        raise ValueError(f"replayRatio {replay_ratio} needs a replay token stream (data.replay)")
    if len(replay) < 2:
        return 0  # an empty replay set trains pure SFT
    return min(_js_round(batch_size * replay_ratio), batch_size - 1)


def sft_batches(examples: list, batch_size: int, context_length: int, seed: int, pad_id: int, eos_id: int,
                replay=None, replay_ratio: float = 0.0):
    """Each epoch visits every example once in a seeded order (ml/mixing.ts sftBatches).

    With a replay stream, the first replay rows of each batch are LM windows (every target counts)
    and the pairs advance by the remaining rows per step, so ratio 0 is exactly pure SFT.
    """
    replay_rows = sft_replay_rows(batch_size, replay, replay_ratio)
    pair_rows = batch_size - replay_rows
    orders = {}

    def order_of(epoch: int) -> list:
        if epoch not in orders:
            if len(orders) > 4:
                orders.clear()
            orders[epoch] = permutation(mulberry32(derive_seed(seed, "sft", epoch)), len(examples))
        return orders[epoch]

    def batch(step: int):
        inputs, targets, masks = [], [], []
        if replay_rows > 0:
            uniform = mulberry32(derive_seed(seed, "sft-replay", step))
            for _ in range(replay_rows):
                window = _sample_window(replay, context_length + 1, uniform).tolist()
                inputs.append(window[:-1])
                targets.append(window[1:])
                masks.append([1.0] * context_length)
        for r in range(pair_rows):
            index = step * pair_rows + r
            prompt, response = examples[order_of(index // len(examples))[index % len(examples)]]
            i, t, m = sft_row(prompt, response, context_length, pad_id, eos_id)
            inputs.append(i)
            targets.append(t)
            masks.append(m)
        return torch.tensor(inputs), torch.tensor(targets), torch.tensor(masks, dtype=torch.float32)

    return batch
