"""``python -m control.simulator [--host H] [--port P] ...``: run the simulator."""

from __future__ import annotations

import argparse
import logging

from control.simulator.server import Simulator


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (a subset of the constructor's)."""
    parser = argparse.ArgumentParser(
        prog="python -m control.simulator",
        description="LLM provider simulator (OpenAI and Anthropic formats) on loopback.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=9999, help="port (0: any free port)")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before each answer")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="delay between chunks")
    parser.add_argument("--chunks", type=int, default=8, help="words in the default reply")
    parser.add_argument("--cached-tokens", type=int, default=0,
                        help="cached prompt tokens to report")
    parser.add_argument("--require-key", default=None,
                        help="answer 401 unless requests carry this provider key")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the options and serve until SIGINT / SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Simulator(args.host, args.port, latency_ms=args.latency_ms,
              chunk_delay_ms=args.chunk_delay_ms, chunks=args.chunks,
              cached_tokens=args.cached_tokens, require_key=args.require_key).run_forever()


if __name__ == "__main__":
    main()
