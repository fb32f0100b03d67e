"""Built-in tools: useful, bounded, and never raising into the agent loop."""

from __future__ import annotations

import pytest

from agent_service.tools import BUILTIN_TOOLS, ToolError, calculator


@pytest.mark.parametrize(
    ("expression", "result"), [("2+3*4", "14"), ("-(7 // 2)", "-3"), ("2 ** 10", "1024")]
)
def test_the_calculator_evaluates_arithmetic(expression: str, result: str) -> None:
    assert calculator(expression) == result


@pytest.mark.parametrize(
    "expression", ["__import__('os')", "2 ** 100000", "x + 1", "1" * 300, "1/0", "[1]"]
)
def test_the_calculator_refuses_anything_else(expression: str) -> None:
    with pytest.raises(ToolError):
        calculator(expression)


def test_a_failing_tool_returns_an_error_message_instead_of_raising() -> None:
    assert BUILTIN_TOOLS["calculator"].call({"expression": "1/0"}).startswith("error:")
    assert BUILTIN_TOOLS["word_count"].call({"wrong": "args"}) == "error: invalid arguments"


def test_each_tool_describes_itself_for_function_calling() -> None:
    for name, tool in BUILTIN_TOOLS.items():
        spec = tool.spec()
        assert spec["type"] == "function"
        assert spec["function"]["name"] == name
        assert spec["function"]["parameters"]["type"] == "object"
