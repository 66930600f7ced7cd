"""A fast OpenAI-format upstream for the proxy benchmark (aiohttp on uvloop), so the
provider is never the bottleneck: ``POST /v1/chat/completions`` answers a fixed reply with
usage, as JSON or as an SSE stream of ``--chunks`` chunks, a usage chunk and ``[DONE]``.

    python bench/fast_upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import json

import uvloop
from aiohttp import web

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


def build(chunks: int) -> tuple[bytes, bytes]:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(chunks))
    usage = {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
    answer = json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "sim-gpt",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": usage}).encode()
    frames = []
    for i in range(chunks):
        frames.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                       "model": "sim-gpt", "choices": [{"index": 0, "delta": {
                           "content": WORDS[i % len(WORDS)] + " "}, "finish_reason": None}]})
    frames.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                   "model": "sim-gpt", "choices": [{"index": 0, "delta": {},
                                                    "finish_reason": "stop"}]})
    frames.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                   "model": "sim-gpt", "choices": [], "usage": usage})
    stream = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    return answer, stream + b"data: [DONE]\n\n"


def app(chunks: int) -> web.Application:
    answer, stream = build(chunks)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream": true' in body or b'"stream":true' in body:
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(stream)
            await resp.write_eof()
            return resp
        return web.Response(body=answer, content_type="application/json")

    application = web.Application()
    application.router.add_post("/v1/chat/completions", chat)
    return application


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(app(args.chunks), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
