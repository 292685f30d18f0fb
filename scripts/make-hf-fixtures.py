#!/usr/bin/env python3
"""Builds tiny, random, deterministic Hugging Face model folders for tests.

    .tools/venv/bin/python scripts/make-hf-fixtures.py OUTDIR

Writes, from configs only (nothing is downloaded):
  OUTDIR/gpt2/        GPT2LMHeadModel (n_embd 32, 2 layers, 2 heads, 64 positions), float32, tied embeddings,
                      byte-level BPE tokenizer (~600 ids) with <|endoftext|> as bos/eos/unk
  OUTDIR/llama/       LlamaForCausalLM (hidden 32, ffn 64, 2 layers, 4 heads, 2 kv heads, 64 positions),
                      float32, untied lm_head, byte-level BPE tokenizer with <s> </s> <pad>, a chat template,
                      and <s> prepended when special tokens are added (as Llama's tokenizer.json does)
  OUTDIR/llama-bf16/  the same llama weights saved in bfloat16
and prints one JSON line on stdout that summarises each folder. Same bytes on every run: weights come from
torch.manual_seed, tokenizers are trained on the fixed corpus below. Needs the venv from
scripts/setup-python.sh (torch, transformers, tokenizers, safetensors).
"""
import json
import os
import sys
import time

started = time.monotonic()

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

if len(sys.argv) != 2 or not sys.argv[1].strip():
    print("make-hf-fixtures: usage: make-hf-fixtures.py OUTDIR (the folder to write gpt2/, llama/, llama-bf16/ into)",
          file=sys.stderr)
    sys.exit(2)

import warnings

warnings.filterwarnings("ignore")

try:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)
except ImportError as error:
    print(f"make-hf-fixtures: {error}; run `bash scripts/setup-python.sh` and use the python it prints",
          file=sys.stderr)
    sys.exit(2)

# A small mixed corpus: English prose, Korean, Japanese, emoji and Python code. Repeated so that
# the common pairs clear min_frequency; the merges are fixed by this text alone.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Small language models can be adapted to a new domain with continual pretraining.",
    "She sells sea shells by the sea shore, and the shells she sells are surely seashells.",
    "In the beginning the data was messy; after cleaning, the loss went down steadily.",
    "A durable workflow survives crashes, retries failed activities, and resumes from checkpoints.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Numbers like 3.14159, 2718 and 1,000,000 appear in text as well as dates like 2024-05-17.",
    "Don't panic! Isn't it nice when tests pass? We'll see what they've done.",
    "안녕하세요. 오늘 날씨가 정말 좋네요.",
    "저는 작은 언어 모델을 학습시키고 있습니다.",
    "한국어 문장은 띄어쓰기가 있어서 토큰화가 조금 쉽습니다.",
    "서울은 대한민국의 수도이며 인구가 많습니다.",
    "こんにちは、世界。今日はいい天気ですね。",
    "私は小さな言語モデルを訓練しています。",
    "東京は日本の首都で、たくさんの人が住んでいます。",
    "ひらがなとカタカナと漢字が混ざっています。",
    "Emoji time: 😀 😂 🎉 🚀 ❤️ 👍🏽 🇰🇷 🇯🇵 👨‍👩‍👧",
    "Mixed: hello 世界 🌍, 안녕 world! 🍣🍜 are tasty.",
    "def add(a, b):",
    "    return a + b",
    "for i in range(10):",
    "    print(f\"step {i}: loss={loss:.4f}\")",
    "import torch.nn as nn",
    "class TinyModel(nn.Module):",
    "    def forward(self, x):",
    "        return self.linear(x) * 2  # scale",
    "if __name__ == \"__main__\":",
    "    data = {\"tokens\": [1, 2, 3], 'name': 'tiny'}",
    "x = [n ** 2 for n in range(100) if n % 3 == 0]",
    "\ttabs\tand  double  spaces\n  and newlines\n\n",
]
REPEAT = 8
VOCAB_SIZE = 600

# GPT-2's pre-tokenization regex, for reference: ByteLevel(use_regex=True) applies it.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

LLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(special_tokens, bos_template=None):
    tokenizer = Tokenizer(models.BPE())
    # ByteLevel with use_regex=True splits with GPT-2's pattern (GPT2_PATTERN) before mapping bytes to
    # the printable GPT-2 alphabet: the same pre_tokenizer as GPT-2's own tokenizer.json.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * REPEAT, trainer=trainer, length=len(CORPUS) * REPEAT)
    if bos_template:
        bos = special_tokens[0]
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                special_tokens=[(bos, tokenizer.token_to_id(bos))],
            ),
        ])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def add_torch_dtype(path):
    """transformers 4.56+ writes only "dtype" into config.json; checkpoints made before it (most on the
    Hub) have "torch_dtype". Write both, as HF does (sorted, indent 2), so readers of either key work."""
    config_path = os.path.join(path, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["torch_dtype"] = config["dtype"]
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def perturb(model, seed):
    """Fresh models have unit norms and zero biases; noise on every parameter makes a check of
    the weight mapping see each tensor (a bias or norm read as the wrong one changes the logits)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def folder_summary(name, path, model):
    files = sorted(os.listdir(path))
    return {
        "name": name,
        "model_type": model.config.model_type,
        "architectures": model.config.architectures,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "parameters": model.num_parameters(),
        "vocab_size": model.config.vocab_size,
        "files": {f: os.path.getsize(os.path.join(path, f)) for f in files},
    }


def main(outdir):
    torch.manual_seed(0)
    summaries = []

    # --- GPT-2 ---
    gpt2_tok = train_tokenizer(["<|endoftext|>"])
    eot = "<|endoftext|>"
    gpt2_fast = PreTrainedTokenizerFast(
        tokenizer_object=gpt2_tok, bos_token=eot, eos_token=eot, unk_token=eot,
        model_max_length=64, clean_up_tokenization_spaces=False,
    )
    eot_id = gpt2_tok.token_to_id(eot)
    gpt2_config = GPT2Config(
        vocab_size=gpt2_tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=eot_id, eos_token_id=eot_id, architectures=["GPT2LMHeadModel"],
    )
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(gpt2_config).to(torch.float32).eval()
    path = os.path.join(outdir, "gpt2")
    gpt2.save_pretrained(path, safe_serialization=True)
    add_torch_dtype(path)
    gpt2_fast.save_pretrained(path)
    summaries.append(folder_summary("gpt2", path, gpt2))

    # --- Llama ---
    llama_tok = train_tokenizer(["<s>", "</s>", "<pad>"], bos_template=True)
    llama_fast = PreTrainedTokenizerFast(
        tokenizer_object=llama_tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=64, clean_up_tokenization_spaces=False, chat_template=LLAMA_CHAT_TEMPLATE,
    )
    llama_config = LlamaConfig(
        vocab_size=llama_tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=llama_tok.token_to_id("<s>"), eos_token_id=llama_tok.token_to_id("</s>"),
        pad_token_id=llama_tok.token_to_id("<pad>"), architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    llama = LlamaForCausalLM(llama_config).to(torch.float32).eval()
    path = os.path.join(outdir, "llama")
    llama.save_pretrained(path, safe_serialization=True)
    add_torch_dtype(path)
    llama_fast.save_pretrained(path, save_jinja_files=False)
    summaries.append(folder_summary("llama", path, llama))

    # --- Llama, bfloat16 ---
    llama_bf16 = llama.to(torch.bfloat16)
    path = os.path.join(outdir, "llama-bf16")
    llama_bf16.save_pretrained(path, safe_serialization=True)
    add_torch_dtype(path)
    llama_fast.save_pretrained(path, save_jinja_files=False)
    summaries.append(folder_summary("llama-bf16", path, llama_bf16))

    # --- The rest of the Llama family, every parameter perturbed ---
    ids = {"bos_token_id": llama_tok.token_to_id("<s>"), "eos_token_id": llama_tok.token_to_id("</s>"),
           "pad_token_id": llama_tok.token_to_id("<pad>")}
    shape = {"vocab_size": llama_tok.get_vocab_size(), "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-6}
    family = [
        # Qwen2: biases on q, k and v; tied embeddings; a large rope_theta.
        ("qwen2", Qwen2ForCausalLM, Qwen2Config(**shape, **ids, num_attention_heads=4, num_key_value_heads=2,
                                                 rope_theta=1000000.0, tie_word_embeddings=True,
                                                 use_sliding_window=False, architectures=["Qwen2ForCausalLM"])),
        # SmolLM-like: a Llama with tied embeddings, one key/value head and Llama 3's rotary scaling.
        ("smollm", LlamaForCausalLM, LlamaConfig(**shape, **ids, num_attention_heads=2, num_key_value_heads=1,
                                                  tie_word_embeddings=True, rope_theta=10000.0,
                                                  rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                "original_max_position_embeddings": 16},
                                                  architectures=["LlamaForCausalLM"])),
        # Mistral: a sliding window shorter than the positions, so dacp's window is the sliding one.
        ("mistral", MistralForCausalLM, MistralConfig(**shape, **ids, num_attention_heads=4, num_key_value_heads=1,
                                                       sliding_window=32, tie_word_embeddings=False,
                                                       architectures=["MistralForCausalLM"])),
    ]
    for i, (name, cls, config) in enumerate(family):
        torch.manual_seed(0)
        model = perturb(cls(config).to(torch.float32).eval(), seed=10 + i)
        path = os.path.join(outdir, name)
        model.save_pretrained(path, safe_serialization=True)
        add_torch_dtype(path)
        llama_fast.save_pretrained(path, save_jinja_files=False)
        summaries.append(folder_summary(name, path, model))

    print(json.dumps({
        "outdir": os.path.abspath(outdir),
        "seconds": round(time.monotonic() - started, 2),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "tokenizers": __import__("tokenizers").__version__},
        "folders": summaries,
    }, ensure_ascii=False))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as error:  # noqa: BLE001 - one line for the caller, not a traceback
        print(f"make-hf-fixtures: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(2)
