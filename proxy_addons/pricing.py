"""Price: what a request holds before forwarding and what it costs once it has ended.

hushgate's two token estimates live here, side by side, because they answer different
questions:

* :func:`hold_input_tokens` — the *worst case* for the hold taken before forwarding:
  one token per 3 bytes of request body (generous: JSON framing counts too).
* :func:`charged_input_tokens` — the *best guess* for a charge when the provider reported
  no usage: one token per 4 bytes of request body, and :func:`tokens_from_chars` for
  output (one token per 4 characters of generated text). Such charges are marked estimated.

Charging policy (the README's table): usage reported → exact; stream ended without usage,
client disconnect or upstream cut → estimated from what was delivered; a stage that failed
after content reached the client → the hold's worst case, estimated, ``internal_error``;
refused, provider errors and answers withheld from the client → nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.core.config import Prices
from control.core.money import cost_of


@dataclass(slots=True)
class Usage:
    """Token counts. ``input_tokens`` includes ``cached_tokens``."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    seen: bool = False  # the provider reported usage (vs. estimated)


def hold_input_tokens(request_bytes: int) -> int:
    """Worst-case input tokens for the hold: one token per 3 bytes of body, at least 1."""
    return max(1, -(-request_bytes // 3))


def charged_input_tokens(request_bytes: int) -> int:
    """Estimated input tokens for a charge without usage: one per 4 bytes, at least 1."""
    return max(1, -(-request_bytes // 4))


def tokens_from_chars(chars: int) -> int:
    """Estimated output tokens: about 4 characters of generated text per token, rounded up."""
    return -(-chars // 4) if chars > 0 else 0


def worst_case_cost(prices: Prices, input_tokens: int, output_tokens: int,
                    choices: int = 1) -> int:
    """The hold: input once, ``output_tokens`` for each of ``choices`` generations
    (OpenAI's ``n`` / ``best_of``: the provider bills every generated choice)."""
    return cost_of(input_tokens, prices.input) + cost_of(output_tokens * max(1, choices),
                                                         prices.output)


def usage_cost(prices: Prices, usage: Usage) -> int:
    """Exact cost of reported usage: uncached input, cached input and output at their prices."""
    cached = min(usage.cached_tokens, usage.input_tokens)
    return (cost_of(usage.input_tokens - cached, prices.input)
            + cost_of(cached, prices.cached_input)
            + cost_of(usage.output_tokens, prices.output))


def final_usage(reported: Usage, *, text_chars: int, request_bytes: int, complete: bool,
                embeddings: bool = False) -> tuple[Usage, bool]:
    """The usage to charge and whether it is estimated.

    Reported usage of a complete answer is used as is; otherwise the estimate fills in what
    the provider did not report (input from the body size, output from the delivered text).
    """
    if reported.seen and complete and (reported.output_tokens or embeddings or not text_chars):
        return reported, False
    usage = Usage(reported.input_tokens or charged_input_tokens(request_bytes),
                  max(reported.output_tokens, tokens_from_chars(text_chars)),
                  reported.cached_tokens, seen=False)
    return usage, True
