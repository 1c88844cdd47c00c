"""What the GPU checks share: the device they run on (CUDA, or the CPU for a smoke run of the check
itself), a tokenizer built in-process (the GPU machine has neither the network nor the embedded-model
packages), tiny random models, and the measurements the check writes to bench/results/gpu_check.json."""
from __future__ import annotations

import functools
import os

import torch

# ``tests/gpu/check.py --device cpu`` runs the same checks on the CPU to prove the check itself works.
DEVICE = os.environ.get("RLHF_RAY_GPU_CHECK_DEVICE", "cuda")
RESULTS: dict[str, dict] = {}  # test name → figures it measured


def on_device() -> bool:
    return DEVICE == "cpu" or torch.cuda.is_available()


@functools.cache
def _tokenizer_files(folder: str) -> str:
    """A byte-level BPE trained here on a few sentences, with ChatML's markers as special tokens and
    ChatML as its chat template: enough to render, mask and batch chats, built without a download."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from rlhf_ray.core import chat

    corpus = ["The quick brown fox jumps over the lazy dog.", "What is 12 + 30? It is 42.",
              "Which of these is a fruit: saw, plum, egypt, violin? Plum.", "Step one is fine. Step two is wrong.",
              "Thanks, happy to help! Sure, here it is. No. Go away."] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = chat.BUILTIN_TEMPLATES["chatml"]
    tok.save_pretrained(folder)
    return folder


def tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_files(folder))


def tiny_policy(folder: str, tok, seed: int = 0) -> str:
    """A random-weight Llama (head_dim 32) over ``tok``, saved as an HF folder in ``folder``."""
    from rlhf_ray import models

    models.save_policy(models.tiny_causal_lm(tok, hidden_size=64, layers=2, heads=2, seed=seed), tok, folder)
    return folder
