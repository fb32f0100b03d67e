"""What turns cost: token counts per client and model, and dollars when a price is known."""

from __future__ import annotations

from collections.abc import Mapping

from agent_service.config import ModelPrice
from agent_service.metrics import Metrics
from agent_service.providers import Message, Usage, count_tokens

ANONYMOUS = "-"  # the client label when client authentication is off
# What a chat message costs beyond its text (role and framing), about as OpenAI counts it.
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate of `text`'s tokens, to bound what a turn sends to a model.

    One token per 4 bytes of UTF-8, rounded up (about what BPE tokenizers make of English;
    scripts with more bytes per character count more), and never fewer than its words (what
    the echo model counts), so it errs on the side of sending less.
    """
    return max(count_tokens(text), -(-len(text.encode()) // 4))


def message_tokens(message: Message) -> int:
    """The estimate of one chat message: its text and its framing."""
    return MESSAGE_OVERHEAD_TOKENS + estimate_tokens(str(message.get("content") or ""))


def cost_usd(usage: Usage, price: ModelPrice | None) -> float | None:
    """The cost of `usage` at `price` (dollars per million tokens); None without a price."""
    if price is None:
        return None
    return (usage.input_tokens * price.input + usage.output_tokens * price.output) / 1_000_000


class UsageMeter:
    """Counts every turn's tokens (and cost) in the metrics."""

    def __init__(self, metrics: Metrics, prices: Mapping[str, ModelPrice]) -> None:
        self._metrics = metrics
        self._prices = prices

    def price(self, model: str) -> ModelPrice | None:
        """The configured price of a model (by its name without the provider prefix)."""
        return self._prices.get(model) or self._prices.get(model.partition(":")[2])

    def record(self, client: str | None, model: str, usage: Usage) -> dict[str, float | int]:
        """Count one turn's usage; the `usage` object of its answer."""
        label = client or ANONYMOUS
        tokens = self._metrics.tokens
        if usage.input_tokens:
            tokens.labels(label, model, "input").inc(usage.input_tokens)
        if usage.output_tokens:
            tokens.labels(label, model, "output").inc(usage.output_tokens)
        answer: dict[str, float | int] = dict(usage.as_dict())
        cost = cost_usd(usage, self.price(model))
        if cost is not None:
            self._metrics.cost.labels(label, model).inc(cost)
            answer["cost_usd"] = round(cost, 8)
        return answer
