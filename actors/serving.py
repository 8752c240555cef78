"""The Ray Serve deployments behind the OpenAI-compatible API: model server, guardrail, and HTTP ingress.

    client ──HTTP──► OpenAIIngress (FastAPI: auth, rate limit, limits, OpenAI schema, SSE, metrics)
                        ├─► Guardrail     harm judge on input and output, PII redaction
                        └─► ModelServer×N  dynamic batching (serve.batch) over the library's Decoder (KV cache);
                                           the model's hooks, a safe-projection head included, run inside.

The deployments hold state and translate; decoding, guardrail decisions, schemas and access rules live in
`safelatent.serving`.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from safelatent.serving import openai_schema as schema
from safelatent.serving.access import KeyChecker, RateLimiter, presented_key
from safelatent.serving.decoding import FINISH_STOP, Delta, SamplingParams
from safelatent.serving.guardrails import GuardrailSettings
from safelatent.serving.openai_schema import OpenAIError
from safelatent.serving.settings import ServeConfig

logger = logging.getLogger("safelatent.serving")

CONTENT_FILTER = "content_filter"
# Batches of one kind (streamed or whole replies) decoding at once in a replica: while one decodes, requests that
# arrive meanwhile start the next instead of waiting for every request of the running one to finish.
CONCURRENT_BATCHES = 2


@serve.deployment
class ModelServer:
    """One model replica. Concurrent requests are decoded together in batches (serve.batch)."""

    def __init__(self, config: dict[str, Any]):
        import torch

        from safelatent.models.loading import load
        from safelatent.models.safe_head import attached_head
        from safelatent.serving.decoding import Decoder
        from safelatent.serving.model_source import resolve_source

        settings = ServeConfig.model_validate(config)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        location = resolve_source(settings.model, tracking_uri=settings.tracking_uri)
        loaded = load(location, dtype=settings.dtype, device=settings.device, endpoint_url=settings.s3_endpoint_url)
        self.decoder = Decoder(loaded.model, loaded.tokenizer)
        head = attached_head(loaded.model)
        self.description = {"source": settings.model, "context_length": self.decoder.context_length,
                            "safe_head_layer": head.layer if head is not None else None,
                            "device": str(self.decoder.device)}
        batching = settings.batching
        for batched in (self._decode, self._decode_whole):
            batched.set_max_batch_size(batching.max_batch_size if batching.enabled else 1)
            batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s if batching.enabled else 0.0)

    def info(self) -> dict[str, Any]:
        return self.description

    def prepare(self, messages: list[dict[str, str]] | None, prompt: str | None, max_tokens: int) -> dict[str, Any]:
        """Token ids for a chat or a plain prompt, or the reason they cannot be generated from."""
        ids = self.decoder.encode_chat(messages) if messages is not None else self.decoder.encode_text(prompt or "")
        if not ids:
            return {"error": "the prompt has no tokens"}
        room = self.decoder.context_length - len(ids)
        if max_tokens > room:
            return {"error": f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}: together more than "
                             f"the model's context of {self.decoder.context_length} tokens; ask for at most "
                             f"{max(room, 0)} tokens or shorten the prompt"}
        return {"prompt_ids": ids}

    async def complete(self, messages: list[dict[str, str]] | None, prompt: str | None,
                       params: SamplingParams) -> dict[str, Any]:
        """One request's whole reply ({"prompt_tokens", "text", "completion_tokens", "finish_reason"}, or
        {"error"}), decoded in a batch with the other whole-reply requests waiting: one message back, however
        many tokens."""
        prepared = self.prepare(messages, prompt, params.max_tokens)
        if "error" in prepared:
            return prepared
        text, tokens, finish = await self._decode_whole((prepared["prompt_ids"], params))
        return {"prompt_tokens": len(prepared["prompt_ids"]), "text": text, "completion_tokens": tokens,
                "finish_reason": finish}

    async def generate(self, messages: list[dict[str, str]] | None, prompt: str | None,
                       params: SamplingParams, every: int = 1) -> AsyncIterator[dict[str, Any]]:
        """Stream one request: first {"prompt_tokens"} (or {"error"} and nothing more), then its deltas
        ({"text", "completion_tokens", "finish_reason"}), one per `every` tokens and one at the end. A caller that
        acts only every N tokens (the guardrail's streamed checks) asks for N: each message back costs the same
        however many tokens it carries."""
        prepared = self.prepare(messages, prompt, params.max_tokens)
        if "error" in prepared:
            yield prepared
            return
        yield {"prompt_tokens": len(prepared["prompt_ids"])}
        text, sent = "", 0
        async for delta in self._decode((prepared["prompt_ids"], params)):
            text += delta.text
            if delta.finish_reason is None and delta.completion_tokens - sent < every:
                continue
            sent = delta.completion_tokens
            yield {"text": text, "completion_tokens": delta.completion_tokens, "finish_reason": delta.finish_reason}
            text = ""

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.05, max_concurrent_batches=CONCURRENT_BATCHES)
    async def _decode(self, jobs: list[tuple[list[int], SamplingParams]]) -> AsyncIterator[list[Any]]:
        steps = self.decoder.stream([job[0] for job in jobs], [job[1] for job in jobs])
        while True:
            deltas: list[Delta | None] | None = await asyncio.to_thread(next, steps, None)
            if deltas is None:
                return
            yield [StopIteration if delta is None else delta for delta in deltas]

    # Whole replies are batched apart from streamed ones: the batch runs to its end in one worker thread and
    # hands each request its reply once, instead of waking the event loop for every token of every request.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.05, max_concurrent_batches=CONCURRENT_BATCHES)
    async def _decode_whole(self, jobs: list[tuple[list[int], SamplingParams]]) -> list[tuple[str, int, str]]:
        return await asyncio.to_thread(self.decoder.complete, [job[0] for job in jobs], [job[1] for job in jobs])


@serve.deployment
class Guardrail:
    """The harm judge and PII checks (safelatent.serving.guardrails) as a deployment of their own. Each call
    carries a batch of checks (the ingress gathers the checks that arrive together) and the harm judge scores
    them in one forward."""

    def __init__(self, settings: dict[str, Any], device: str = "auto", s3_endpoint_url: str | None = None):
        from safelatent.serving.guardrails import Guardrail as Checks
        from safelatent.serving.guardrails import load_judge

        parsed = GuardrailSettings.model_validate(settings)
        judge = load_judge(parsed.harm_judge, device=device, endpoint_url=s3_endpoint_url) if parsed.judges else None
        self.checks = Checks(parsed, judge)

    async def check_inputs(self, requests: list[tuple[list[str], list[str]]]) -> list[dict[str, Any]]:
        """For each (user messages, all messages): the verdict on the newest user message, with every message of
        the conversation redacted as the PII policy says ("messages")."""
        scores = await self._score([self.checks.input_judgement(users) for users, _ in requests])
        verdicts = []
        for (users, every), probability in zip(requests, scores, strict=True):
            verdict = self.checks.check_input(users, harm_probability=probability)
            verdicts.append({**verdict.report(), "text": verdict.text,
                             "messages": self.checks.redact_messages(every)})
        return verdicts

    async def check_outputs(self, requests: list[tuple[str, str, bool]]) -> list[dict[str, Any]]:
        """For each (prompt, reply so far, whether it is final): the verdict and the text that may be sent."""
        scores = await self._score([self.checks.output_judgement(prompt, text) for prompt, text, _ in requests])
        verdicts = []
        for (prompt, text, final), probability in zip(requests, scores, strict=True):
            verdict = self.checks.check_output(prompt, text, final=final, harm_probability=probability)
            verdicts.append({**verdict.report(), "text": verdict.text})
        return verdicts

    async def _score(self, pairs: list[tuple[str, str] | None]) -> list[float | None]:
        """The judge's harm probability for every pair that needs one, in one forward; None for the others."""
        asked = [pair for pair in pairs if pair is not None]
        if not asked:
            return [None] * len(pairs)
        judge = self.checks.judge
        assert judge is not None  # a judgement pair exists only with a judge
        scores = iter(await asyncio.to_thread(judge.probabilities, [pair[0] for pair in asked],
                                              [pair[1] for pair in asked]))
        return [next(scores) if pair is not None else None for pair in pairs]


app = FastAPI(title="safelatent", description="An OpenAI-compatible API for safelatent models, with guardrails.")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Routing errors (an unknown path, a wrong method) answer in OpenAI's error shape too."""
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return JSONResponse(schema.error_body(str(error.detail), type=kind), status_code=error.status_code,
                        headers=getattr(error, "headers", None))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(schema.error_body(str(error.errors()), code="invalid_request"), status_code=422)


@serve.deployment
@serve.ingress(app)
class OpenAIIngress:
    """HTTP in front: access control, limits, the OpenAI schema, streaming, guardrails, metrics."""

    def __init__(self, model: Any, guardrail: Any, config: dict[str, Any], key_digests: list[str]):
        from ray.util import metrics

        self.model = model
        self.guardrail = guardrail
        self.settings = ServeConfig.model_validate(config)
        self.name = self.settings.served_name()
        self.keys = KeyChecker(key_digests, required=self.settings.api_keys.required)
        self.limiter = RateLimiter(self.settings.rate_limit)
        self.created = int(time.time())
        self.requests = metrics.Counter("safelatent_serve_requests", "HTTP requests by route and status.",
                                        tag_keys=("route", "status"))
        self.latency = metrics.Histogram("safelatent_serve_latency_s", "Request latency, seconds.",
                                         boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
                                         tag_keys=("route",))
        self.tokens = metrics.Counter("safelatent_serve_generated_tokens", "Completion tokens generated.")
        self.token_rate = metrics.Gauge("safelatent_serve_tokens_per_s", "Completion tokens/s of the last request.")
        self.guardrail_hits = metrics.Counter("safelatent_serve_guardrail_hits", "Guardrail findings by check and "
                                                                                 "action.", tag_keys=("check",
                                                                                                      "action"))
        batching = self.settings.batching
        for batched in (self._check_inputs, self._check_outputs):
            batched.set_max_batch_size(batching.max_batch_size if batching.enabled else 1)
            batched.set_batch_wait_timeout_s(batching.guardrail_wait_timeout_s if batching.enabled else 0.0)

    # ---- routes -------------------------------------------------------------------------------------------

    @app.get("/health")
    def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        try:
            info = await asyncio.wait_for(self.model.info.remote(), timeout=10)
        except Exception as error:  # not ready yet, or a replica is down: say so, with 503
            return JSONResponse({"status": "unavailable", "reason": repr(error)}, status_code=503)
        return JSONResponse({"status": "ready", "model": self.name, **info})

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        return await self._handle(request, "models", self._models)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._handle(request, "chat", self._chat)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._handle(request, "completions", self._completion)

    # ---- request handling ---------------------------------------------------------------------------------

    async def _handle(self, request: Request, route: str, handler) -> Any:
        started = time.perf_counter()
        status = 200
        try:
            caller = self._authorize(request)
            response = await handler(request, caller)
        except OpenAIError as error:
            status = error.status
            response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
        except Exception:
            logger.exception("request to %s failed", route)
            status = 500
            response = JSONResponse(schema.error_body("the server failed to answer; the error is in its log",
                                                      type="server_error"), status_code=500)
        self.requests.inc(tags={"route": route, "status": str(status)})
        if not isinstance(response, StreamingResponse):
            self.latency.observe(time.perf_counter() - started, tags={"route": route})
        return response

    def _authorize(self, request: Request) -> str:
        try:
            caller = self.keys.identify(presented_key({k.lower(): v for k, v in request.headers.items()}))
        except PermissionError as problem:
            if str(problem) == "missing":
                raise OpenAIError(401, "no API key: send it as 'Authorization: Bearer KEY'",
                                  type="authentication_error", code="missing_api_key") from None
            raise OpenAIError(403, "the API key is not valid", type="authentication_error",
                              code="invalid_api_key") from None
        caller = caller or (request.client.host if request.client else "anonymous")
        wait = self.limiter.acquire(caller)
        if wait > 0:
            raise OpenAIError(429, f"rate limit of {self.settings.rate_limit.requests_per_minute:g} requests per "
                                   f"minute reached; retry in {wait:.1f}s", type="rate_limit_error",
                              code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait)))})
        return caller

    async def _body(self, request: Request, model_class):
        limit = self.settings.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise OpenAIError(413, f"the request body has {declared} bytes; the limit is {limit}",
                              code="request_too_large")
        body = await request.body()
        if len(body) > limit:
            raise OpenAIError(413, f"the request body has {len(body)} bytes; the limit is {limit}",
                              code="request_too_large")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise OpenAIError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise OpenAIError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            parsed = model_class.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or None
            message = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors())
            raise OpenAIError(422, message, param=where, code="invalid_request") from None
        if parsed.model != self.name:
            raise OpenAIError(404, f"the model {parsed.model!r} does not exist here; this server serves "
                                   f"{self.name!r} (GET /v1/models)", param="model", code="model_not_found")
        if parsed.max_tokens is not None and parsed.max_tokens > self.settings.limits.max_tokens:
            raise OpenAIError(400, f"max_tokens is {parsed.max_tokens}; this server allows at most "
                                   f"{self.settings.limits.max_tokens}", param="max_tokens",
                              code="max_tokens_too_large")
        return parsed

    # The guardrail checks that arrive together go to the guardrail as one call (serve.batch, waiting at most
    # `batching.guardrail_wait_timeout_s`): one message each way and one judge forward for many requests, instead
    # of a Ray call per check. Batching off: one check per call.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, max_concurrent_batches=CONCURRENT_BATCHES)
    async def _check_inputs(self, requests: list[tuple[list[str], list[str]]]) -> list[dict[str, Any]]:
        return await self.guardrail.check_inputs.remote(requests)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, max_concurrent_batches=CONCURRENT_BATCHES)
    async def _check_outputs(self, requests: list[tuple[str, str, bool]]) -> list[dict[str, Any]]:
        return await self.guardrail.check_outputs.remote(requests)

    async def _models(self, request: Request, caller: str) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": self.name, "object": "model", "created": self.created, "owned_by": "safelatent"}]})

    async def _chat(self, request: Request, caller: str):
        parsed: schema.ChatCompletionRequest = await self._body(request, schema.ChatCompletionRequest)
        messages = parsed.template_messages()
        user_texts = [message["content"] for message in messages if message["role"] == "user"]
        return await self._respond(parsed, chat=True, messages=messages, prompt=None, last_user=user_texts[-1],
                                   user_texts=user_texts)

    async def _completion(self, request: Request, caller: str):
        parsed: schema.CompletionRequest = await self._body(request, schema.CompletionRequest)
        return await self._respond(parsed, chat=False, messages=None, prompt=parsed.prompt, last_user=parsed.prompt,
                                   user_texts=[parsed.prompt])

    async def _respond(self, parsed, *, chat: bool, messages, prompt, last_user: str, user_texts: list[str]):
        request_id = schema.new_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        sampling = parsed.sampling(self.settings.limits.default_max_tokens)
        report: dict[str, Any] = {}
        if self.guardrail is not None:
            verdict = await self._check_inputs((user_texts, [message["content"] for message in messages] if chat
                                                else [prompt]))
            if verdict["found"]:
                report["input"] = {key: verdict[key] for key in ("blocked", "found", "harm_probability")
                                   if key in verdict}
                self._count_hits("input", verdict)
            if verdict["blocked"]:
                return self._refusal(parsed, chat, request_id, created, report)
            if chat:
                messages = [{**message, "content": text}
                            for message, text in zip(messages, verdict["messages"], strict=True)]
                last_user = verdict["text"]
            else:
                prompt = last_user = verdict["text"]
        if parsed.stream:
            moderated = self.guardrail is not None and self.settings.guardrails.moderates_output
            every = self.settings.guardrails.stream_check_tokens if moderated else 1
            stream = self.model.options(stream=True).generate.remote(messages, prompt, sampling, every)
            head = await stream.__anext__()
            if "error" in head:
                raise OpenAIError(400, head["error"], param="max_tokens", code="context_length_exceeded")
            events = self._events(stream, parsed, chat, request_id, created, last_user, head["prompt_tokens"])
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        started = time.perf_counter()
        reply = await self.model.complete.remote(messages, prompt, sampling)
        if "error" in reply:
            raise OpenAIError(400, reply["error"], param="max_tokens", code="context_length_exceeded")
        text, completion_tokens, finish = reply["text"], reply["completion_tokens"], reply["finish_reason"]
        prompt_tokens = reply["prompt_tokens"]
        self._count_tokens(completion_tokens, time.perf_counter() - started)
        if self.guardrail is not None and self.settings.guardrails.moderates_output:
            verdict = await self._check_outputs((last_user, text, True))
            if verdict["found"]:
                report["output"] = {key: verdict[key] for key in ("blocked", "found", "harm_probability")
                                    if key in verdict}
                self._count_hits("output", verdict)
            if verdict["blocked"]:
                return self._refusal(parsed, chat, request_id, created, report, prompt_tokens, completion_tokens)
            text = verdict["text"]
        build = schema.chat_completion if chat else schema.text_completion
        body = build(request_id, self.name, text, finish, prompt_tokens, completion_tokens, created)
        if report:
            body["safelatent"] = {"guardrail": report}
        return JSONResponse(body)

    async def _events(self, stream, parsed, chat: bool, request_id: str, created: int, last_user: str,
                      prompt_tokens: int) -> AsyncIterator[str]:
        """SSE events: chunks of checked text, a last chunk with the finish reason, usage if asked, [DONE]."""
        moderated = self.guardrail is not None and self.settings.guardrails.moderates_output
        every = self.settings.guardrails.stream_check_tokens
        raw, sent, completion_tokens, checked = "", "", 0, 0
        finish = FINISH_STOP
        started = time.perf_counter()

        def chunk(content: str | None = None, finish_reason: str | None = None, role: str | None = None) -> str:
            if chat:
                body = schema.chat_chunk(request_id, self.name, created, content=content, role=role,
                                         finish_reason=finish_reason)
            else:
                body = schema.text_chunk(request_id, self.name, created, text=content or "",
                                         finish_reason=finish_reason)
            return f"data: {json.dumps(body)}\n\n"

        try:
            if chat:
                yield chunk(role="assistant", content="")
            async for delta in stream:
                raw += delta["text"]
                completion_tokens = delta["completion_tokens"]
                final = delta["finish_reason"] is not None
                finish = delta["finish_reason"] or finish
                if not moderated:
                    if delta["text"]:
                        yield chunk(content=delta["text"])
                    continue
                if completion_tokens - checked < every and not final:
                    continue
                checked = completion_tokens
                verdict = await self._check_outputs((last_user, raw, final))
                if verdict["found"] and (final or verdict["blocked"]):
                    self._count_hits("output", verdict)
                if verdict["blocked"]:
                    finish = CONTENT_FILTER
                    if not sent:
                        yield chunk(content=self.settings.guardrails.refusal)
                    break
                if verdict["text"].startswith(sent) and len(verdict["text"]) > len(sent):
                    yield chunk(content=verdict["text"][len(sent):])
                    sent = verdict["text"]
            yield chunk(finish_reason=finish)
            if parsed.include_usage_in_stream():
                yield f"data: {json.dumps(schema.usage_chunk(request_id, self.name, created, 'chat.completion.chunk' if chat else 'text_completion', prompt_tokens, completion_tokens))}\n\n"  # noqa: E501
        except Exception:
            logger.exception("streamed request %s failed", request_id)
            yield f"data: {json.dumps(schema.error_body('the server failed while streaming', type='server_error'))}\n\n"
        finally:
            self._count_tokens(completion_tokens, time.perf_counter() - started)
        yield "data: [DONE]\n\n"

    def _refusal(self, parsed, chat: bool, request_id: str, created: int, report: dict[str, Any],
                 prompt_tokens: int = 0, completion_tokens: int = 0):
        refusal = self.settings.guardrails.refusal
        if parsed.stream:
            async def events() -> AsyncIterator[str]:
                if chat:
                    first = schema.chat_chunk(request_id, self.name, created, role="assistant", content=refusal)
                    last = schema.chat_chunk(request_id, self.name, created, finish_reason=CONTENT_FILTER)
                else:
                    first = schema.text_chunk(request_id, self.name, created, text=refusal)
                    last = schema.text_chunk(request_id, self.name, created, finish_reason=CONTENT_FILTER)
                yield f"data: {json.dumps(first)}\n\n"
                yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        build = schema.chat_completion if chat else schema.text_completion
        body = build(request_id, self.name, refusal, CONTENT_FILTER, prompt_tokens, completion_tokens, created)
        body["safelatent"] = {"guardrail": report}
        return JSONResponse(body)

    def _count_hits(self, check: str, verdict: dict[str, Any]) -> None:
        self.guardrail_hits.inc(tags={"check": check, "action": "block" if verdict["blocked"] else "flag"})

    def _count_tokens(self, tokens: int, seconds: float) -> None:
        if tokens:
            self.tokens.inc(tokens)
            self.token_rate.set(tokens / max(seconds, 1e-6))
