"""Built-in tools the agent may call: small, harmless and bounded."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
_MAX_EXPONENT = 100


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
    except (ZeroDivisionError, OverflowError) as err:
        raise ToolError(str(err)) from err


def _evaluate(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ToolError("exponent too large")
        return _BINARY[type(node.op)](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ToolError("only numbers and + - * / // % ** are allowed")


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


def _string_params(*names: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {n: {"type": "string"} for n in names},
        "required": list(names),
        "additionalProperties": False,
    }


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
