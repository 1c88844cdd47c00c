"""LLM-as-a-judge with the MT-Bench single-answer judge prompt (Zheng et al. 2023): a 1–10 rating of one
answer, which is the reward ``score.scorer: judge`` selects by.

The prompt building and rating parsing are pure; a backend (a local vLLM engine or any
OpenAI-compatible endpoint) turns judge conversations into text.
"""
from __future__ import annotations

import math
import os
import re
from typing import Protocol, Sequence

SINGLE_SYSTEM = "You are a helpful assistant."
SINGLE_PROMPT = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    "you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for "
    "example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]"
)
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+(?:\.\d+)?)\]")


def question_text(prompt: Sequence[dict]) -> str:
    """The judged question: the conversation's last user message."""
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def single_messages(question: str, answer: str) -> list[dict]:
    return [{"role": "system", "content": SINGLE_SYSTEM},
            {"role": "user", "content": SINGLE_PROMPT.format(question=question, answer=answer)}]


def parse_rating(text: str) -> float:
    """The ``[[rating]]`` of a judgement (MT-Bench also accepts ``[rating]``); NaN when there is none."""
    m = _RATING.search(text) or _RATING_LOOSE.search(text)
    return float(m.group(1)) if m else math.nan


class Backend(Protocol):
    def complete(self, conversations: list[list[dict]]) -> list[str]: ...


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint; the key comes from an environment variable. Up to
    ``concurrency`` requests at once; a rate limit, a server error or a lost connection is retried
    ``max_retries`` times with the ``openai`` client's own exponential backoff (it honours Retry-After)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 256,
                 concurrency: int = 8, max_retries: int = 4):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "none", max_retries=max_retries)
        self.model, self.max_tokens, self.concurrency = model, max_tokens, concurrency

    def _one(self, messages: list[dict]) -> str:
        r = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0.0,
                                                max_tokens=self.max_tokens)
        return r.choices[0].message.content or ""

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, conversations))  # in order


class VLLMBackend:
    """A local judge model in a vLLM engine, greedy."""

    def __init__(self, model: str, max_tokens: int = 256, max_model_len: int = 4096, gpu_memory_utilization: float = 0.9,
                 engine_kwargs: dict | None = None):
        from rlhf_ray.engines.vllm_engine import load_llm

        from vllm import SamplingParams

        self.llm = load_llm(model, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                            **(engine_kwargs or {}))
        self.params = SamplingParams(temperature=0.0, max_tokens=max_tokens)

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        outs = self.llm.chat(conversations, self.params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]


class JudgeScorer:
    """Rewards = the judge's 1–10 ratings (NaN where it gave none; selection never picks those)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.padding = self.real = 0

    def score(self, prompts: list[list[dict]], completions: list[list[dict]], columns: dict | None = None) -> list[float]:
        convs = [single_messages(question_text(p), c[-1]["content"]) for p, c in zip(prompts, completions)]
        return [parse_rating(t) for t in self.backend.complete(convs)]
