"""Built-in tools the agent may call: small, harmless and bounded."""

from __future__ import annotations

import ast
import logging
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

_BINARY: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Mapping[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_MAX_EXPRESSION = 200
# Every integer the calculator holds, operands and results, fits in this many bits (about 1,233
# decimal digits). Checked before a power is computed and after every other operation, so no step
# works on numbers larger than this: a whole evaluation costs microseconds and a few KiB, which
# is why it may run on the event loop (a thread could not be stopped, a subprocess per call would
# cost more than every turn's other work). It also keeps results under Python's 4,300-digit limit
# of int-to-str conversion, which raised ValueError before.
MAX_INT_BITS = 4096

log = logging.getLogger(__name__)


class ToolError(Exception):
    """A tool could not do what it was asked; the message goes back to the model."""


def calculator(expression: str) -> str:
    """Evaluate arithmetic (+ - * / // % **) on numbers, nothing else."""
    if len(expression) > _MAX_EXPRESSION:
        raise ToolError("expression too long")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as err:
        raise ToolError("not an arithmetic expression") from err
    try:
        return str(_evaluate(tree.body))
    except (ArithmeticError, ValueError, TypeError) as err:
        raise ToolError(str(err) or type(err).__name__) from err


def _evaluate(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_evaluate(node.operand)))
    raise ToolError("only numbers and + - * / // % ** are allowed")


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse an integer power whose result would exceed MAX_INT_BITS, before computing it."""
    # Float powers are one floating-point operation: they overflow (OverflowError) or round.
    integers = isinstance(base, int) and isinstance(exponent, int)
    if (
        integers
        and abs(base) > 1
        and exponent > 0
        and exponent * math.log2(abs(base)) >= MAX_INT_BITS
    ):
        raise ToolError(f"result too large (over {MAX_INT_BITS} bits)")


def _bounded(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"result too large (over {MAX_INT_BITS} bits)")
    return value


def word_count(text: str) -> str:
    """Count the words in a text."""
    return str(len(text.split()))


def clock() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Tool:
    """A callable the model can ask for, with its JSON schema for OpenAI-style function calling."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., str]

    def spec(self) -> dict[str, Any]:
        """The tool as the OpenAI chat completions API describes it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def call(self, arguments: Mapping[str, Any]) -> str:
        """Run the tool; any failure becomes a message for the model, not an exception."""
        try:
            return self.function(**arguments)
        except ToolError as err:
            return f"error: {err}"
        except TypeError:
            return "error: invalid arguments"
        except Exception as err:
            # A bug in a tool is still only a failed tool call: the model sees it, the turn goes on.
            log.warning("tool failed", exc_info=err, extra={"tool": self.name})
            return f"error: the tool failed ({type(err).__name__})"


def _string_params(*names: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {n: {"type": "string"} for n in names},
        "required": list(names),
        "additionalProperties": False,
    }


# Every tool's name: what AGENT_TOOLS accepts, and the enum `make schemas` gives the CRD and the
# chart. Kept equal to BUILTIN_TOOLS' keys by tests/unit/service/test_tools.py.
ToolName = Literal["calculator", "word_count", "clock"]

BUILTIN_TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "calculator",
            "Evaluate an arithmetic expression.",
            _string_params("expression"),
            calculator,
        ),
        Tool("word_count", "Count the words in a text.", _string_params("text"), word_count),
        Tool("clock", "Tell the current UTC time.", _string_params(), clock),
    )
}
