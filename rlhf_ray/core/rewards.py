"""Rule-based rewards: plain functions ``(prompt_messages, completion, row) -> float``.

``score.scorer: function`` with ``score.function: module:callable`` runs one of these (or a user's) in
the scoring stage's actor pool; ``row`` holds the candidate's other columns, such as a gold ``answer``.
They are also the gold reward of evaluation (``eval.gold``) and the checker that labels a policy's own
samples for reward-model training (``reward.samples.checker``): rejection sampling with verifiable
rewards (STaR, RFT, ReST) and the oracle an RM's picks are measured against.
"""
from __future__ import annotations

import importlib
import inspect
import re
import threading
from typing import Callable

RewardFn = Callable[[list, str, dict], float]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in a text (GSM8K-style final-answer extraction), commas removed."""
    found = _NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def final_number(prompt: list, completion: str, row: dict) -> float:
    """1.0 when the completion's last number equals ``row["answer"]``, else 0.0 (the arithmetic task's
    gold reward)."""
    got, want = last_number(completion), str(_answer(row)).replace(",", "")
    try:
        return float(got is not None and float(got) == float(want))
    except ValueError:
        return 0.0


_WORD = re.compile(r"[^\W\d_]+")


def final_word(prompt: list, completion: str, row: dict) -> float:
    """1.0 when the completion's last word equals ``row["answer"]`` (case aside), else 0.0 (the
    categories task's gold reward: listing every option ends on the wrong word, or on the right one by
    the chance a guess has)."""
    words = _WORD.findall(completion.lower())
    return float(bool(words) and words[-1] == str(_answer(row)).lower())


def math_answer(prompt: list, completion: str, row: dict) -> float:
    """1.0 when the completion's final answer is mathematically equal to ``row["answer"]`` (GSM8K numbers,
    MATH LaTeX such as ``\\frac{1}{2}``), by Hugging Face's ``math-verify``, else 0.0."""
    from math_verify import parse, verify

    gold = str(_answer(row))
    if "$" not in gold and "\\boxed" not in gold:
        gold = f"${gold}$"  # a bare LaTeX answer, as MATH stores them
    # math-verify times out with signal.alarm, which only the main thread may use: actor threads run
    # without it (completions are bounded by max_tokens).
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        return float(verify(parse(gold, parsing_timeout=timeout), parse(completion, parsing_timeout=timeout),
                            timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - an answer math-verify cannot read is not a correct one
        return 0.0


def _answer(row: dict):
    a = row.get("answer")
    if a is None or a != a:  # a != a: NaN, how pandas batches carry a null answer
        raise ValueError("this reward needs an 'answer' column in the prompt rows (the gold answer)")
    return a


def source_file(spec: str) -> str:
    """The file that defines the function ``spec`` names (its content decides whether scores are stale)."""
    try:
        return inspect.getsourcefile(load(spec)) or ""
    except TypeError:  # a built-in: no file to watch
        return ""


def load_callable(spec: str, what: str):
    """``module:callable`` → the function (a reward, an adapter); errors name the spec and what it is for."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{what} {spec!r}: expected module:callable, e.g. rlhf_ray.core.rewards:final_number")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import {module}: {e}") from None
    except AttributeError:
        raise ValueError(f"{what} {spec!r}: {module} has no {name}") from None
    if not callable(fn):
        raise ValueError(f"{what} {spec!r} is not callable")
    return fn


def load(spec: str) -> RewardFn:
    """``module:callable`` → the reward function; errors name the spec."""
    return load_callable(spec, "reward function")


def is_batched(fn) -> bool:
    """TRL's reward-function signature: ``(completions, **kwargs)`` or ``(prompts, completions, **kwargs)``,
    called once per batch with the dataset's other columns as keyword lists."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a built-in: the per-sample form
        return False
    return "completions" in params and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def load_batched(spec: str) -> Callable[[list, list[str], list[dict]], list[float]]:
    """``module:callable`` as one call per batch, ``(prompts, completion texts, rows) -> rewards``, whichever
    form it has: per sample ``(prompt, completion, row) -> float`` (this project's), or TRL's batched one
    (``prompts`` as message lists, ``completions`` as one assistant message each, the rows' other columns as
    keyword lists; a None reward is NaN, "not applicable", as TRL reads it). A failure names the spec and,
    per sample, the row's prompt_id and sample."""
    fn = load(spec)
    if is_batched(fn):
        def batched(prompts: list, completions: list[str], rows: list[dict]) -> list[float]:
            names = [k for k in (rows[0] if rows else {}) if k not in ("prompt", "completion", "prompts", "completions")]
            try:
                out = list(fn(prompts=prompts, completions=[[{"role": "assistant", "content": c}] for c in completions],
                              **{k: [r.get(k) for r in rows] for k in names}))
            except Exception as e:  # noqa: BLE001 - a user's function: say which one broke
                raise ValueError(f"reward function {spec} failed on a batch of {len(completions)}: "
                                 f"{type(e).__name__}: {e}") from e
            if len(out) != len(completions):
                raise ValueError(f"reward function {spec} returned {len(out)} rewards for {len(completions)} completions")
            return [float("nan") if v is None else float(v) for v in out]
        return batched

    def per_sample(prompts: list, completions: list[str], rows: list[dict]) -> list[float]:
        out = []
        for p, c, r in zip(prompts, completions, rows):
            try:
                out.append(float(fn(p, c, r)))
            except Exception as e:  # noqa: BLE001 - a user's function: say which row broke it
                raise ValueError(f"reward function {spec} failed on prompt_id {r.get('prompt_id')!r} "
                                 f"sample {r.get('sample_idx')}: {type(e).__name__}: {e}") from e
        return out
    return per_sample
