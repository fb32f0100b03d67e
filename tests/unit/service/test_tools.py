"""Built-in tools: useful, bounded, and never raising into the agent loop."""

from __future__ import annotations

from typing import get_args

import pytest

from agent_service.tools import (
    BUILTIN_TOOLS,
    MAX_INT_BITS,
    Tool,
    ToolError,
    ToolName,
    calculator,
)


@pytest.mark.parametrize(
    ("expression", "result"), [("2+3*4", "14"), ("-(7 // 2)", "-3"), ("2 ** 10", "1024")]
)
def test_the_calculator_evaluates_arithmetic(expression: str, result: str) -> None:
    assert calculator(expression) == result


@pytest.mark.parametrize(
    "expression",
    ["__import__('os')", "2 ** 100000", "x + 1", "1" * 300, "1/0", "[1]", "(-8) ** 0.5", "True"],
)
def test_the_calculator_refuses_anything_else(expression: str) -> None:
    with pytest.raises(ToolError):
        calculator(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "(((9**99)**99)**99)**99",  # each exponent small, the result ~10**96,000,000
        "(10**100)**50",  # 5,001 digits: str() raised ValueError (4,300-digit limit)
        "(2**4000)*(2**4000)",
        f"2**{MAX_INT_BITS}",
    ],
)
def test_the_calculator_refuses_results_beyond_its_bound_before_computing_them(
    expression: str,
) -> None:
    with pytest.raises(ToolError, match="result too large"):
        calculator(expression)


def test_the_calculator_computes_up_to_its_bound() -> None:
    assert int(calculator(f"2**{MAX_INT_BITS - 1}")) == 2 ** (MAX_INT_BITS - 1)


def test_a_failing_tool_returns_an_error_message_instead_of_raising() -> None:
    assert BUILTIN_TOOLS["calculator"].call({"expression": "1/0"}).startswith("error:")
    assert BUILTIN_TOOLS["word_count"].call({"wrong": "args"}) == "error: invalid arguments"


def test_a_tool_that_raises_anything_is_a_tool_result_not_an_exception() -> None:
    def broken() -> str:
        raise RuntimeError("bug")

    tool = Tool("broken", "Always fails.", {"type": "object"}, broken)
    assert tool.call({}) == "error: the tool failed (RuntimeError)"


def test_each_tool_describes_itself_for_function_calling() -> None:
    for name, tool in BUILTIN_TOOLS.items():
        spec = tool.spec()
        assert spec["type"] == "function"
        assert spec["function"]["name"] == name
        assert spec["function"]["parameters"]["type"] == "object"


def test_the_tool_names_settings_accept_are_exactly_the_built_in_tools() -> None:
    # AGENT_TOOLS, the chart's and the CRD's enum are generated from ToolName.
    assert get_args(ToolName) == tuple(BUILTIN_TOOLS)
