"""The smoke gate's decisions: judging answers, retries, which pods to gate, bounded runs."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent_operator.builders import GATE_CONDITION, Owner, pod_template
from agent_operator.gate import (
    Answer,
    GateRunner,
    Verdict,
    api_keys_secret,
    ask,
    condition,
    first_client_key,
    forget,
    judge,
    needs_gate,
    pod_url,
    prompts_of,
    run_gate,
)
from agent_operator.spec import GatePrompt, parse_spec

HELLO = GatePrompt("hello", contains="echo: hello", max_latency_ms=1000)


def _answer(reply="echo: hello", status=200, seconds=0.05, session="s-1"):
    return Answer(status, reply, session, seconds)


def test_an_answer_that_contains_the_text_in_time_passes():
    assert judge(HELLO, _answer()) is None


def test_a_wrong_answer_fails_naming_what_was_expected():
    problem = judge(HELLO, _answer("olleh :ohce"))
    assert problem is not None
    assert "'echo: hello'" in problem
    assert "olleh" in problem


def test_a_slow_answer_fails_on_the_latency_bound():
    problem = judge(HELLO, _answer(seconds=1.5))
    assert problem is not None
    assert "maxLatencyMs 1000" in problem


def test_an_error_status_fails_with_the_status():
    problem = judge(HELLO, _answer('{"error": "budget-exceeded"}', status=429))
    assert problem is not None
    assert "HTTP 429" in problem


def test_matches_is_a_regular_expression_searched_in_the_reply():
    prompt = GatePrompt("calc 6*7", matches=r"\b42\b")
    assert judge(prompt, _answer("calc: 42")) is None
    assert judge(prompt, _answer("calc: 420")) is not None


def test_a_transport_error_is_tried_once_more_and_the_session_is_cleaned_up():
    answers = [Answer(0, "ConnectionResetError", None, 0.01), _answer()]
    sent, cleaned, slept = [], [], []

    def send(url, prompt):
        sent.append((url, prompt.message))
        return answers.pop(0)

    verdict = run_gate(
        "http://10.0.0.7:8080", [HELLO], send=send,
        cleanup=lambda url, sid: cleaned.append(sid), sleep=slept.append,
    )  # fmt: skip
    assert verdict.passed, verdict.message
    assert len(sent) == 2
    assert cleaned == ["s-1"]
    assert slept == [1.0]


def test_a_wrong_answer_is_not_retried_and_ends_the_run():
    sent = []

    def send(url, prompt):
        sent.append(prompt.message)
        return _answer("wrong")

    second = GatePrompt("again", contains="x")
    verdict = run_gate("http://p", [HELLO, second], send=send, cleanup=lambda *_: None)
    assert not verdict.passed
    assert sent == ["hello"]
    assert verdict.message.startswith("prompt 1 ('hello')")


def test_a_passing_verdict_says_how_long_the_gate_took():
    ticks = iter([10.0, 10.4])
    verdict = run_gate(
        "http://p", [HELLO], send=lambda *_: _answer(), cleanup=lambda *_: None,
        clock=lambda: next(ticks),
    )  # fmt: skip
    assert verdict == Verdict(True, "1 prompt(s) passed in 0.40s", verdict.seconds)
    assert abs(verdict.seconds - 0.4) < 1e-9


def _pod(*, ready=True, ip="10.0.0.7", gate=None, gated=True, deleting=False):
    conditions = [{"type": "ContainersReady", "status": "True" if ready else "False"}]
    if gate is not None:
        conditions.append({"type": GATE_CONDITION, "status": gate})
    pod = {
        "metadata": {"name": "demo-abc", "namespace": "ns", "uid": "u"},
        "spec": {"readinessGates": [{"conditionType": GATE_CONDITION}] if gated else []},
        "status": {"phase": "Running", "podIP": ip, "conditions": conditions},
    }
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return pod


def test_a_gated_pod_is_gated_once_its_containers_are_ready_and_only_once():
    assert needs_gate(_pod())
    assert not needs_gate(_pod(ready=False))
    assert not needs_gate(_pod(ip=""))
    assert not needs_gate(_pod(gated=False))
    assert not needs_gate(_pod(deleting=True))
    assert not needs_gate(_pod(gate="True"))
    assert not needs_gate(_pod(gate="False"))


def test_the_pod_carries_its_revisions_prompts():
    spec = parse_spec(
        {"image": "a:1", "rollout": {"gate": {"prompts": [{"message": "hi", "contains": "hi"}]}}}
    )
    template = pod_template(Owner("demo", "ns", "u"), spec)
    assert template["spec"]["readinessGates"] == [{"conditionType": GATE_CONDITION}]
    assert prompts_of(template) == (GatePrompt("hi", contains="hi", max_latency_ms=5000),)
    assert prompts_of({"metadata": {"annotations": {"moorage.dev/gate": "not json"}}}) == ()


def test_no_prompts_means_no_readiness_gate():
    template = pod_template(Owner("demo", "ns", "u"), parse_spec({"image": "a:1"}))
    assert "readinessGates" not in template["spec"]


def test_the_pod_url_brackets_ipv6():
    assert pod_url({"status": {"podIP": "10.1.2.3"}}, 8080) == "http://10.1.2.3:8080"
    assert pod_url({"status": {"podIP": "fd00::5"}}, 8080) == "http://[fd00::5]:8080"


def test_the_condition_records_the_verdict():
    cond = condition(Verdict(False, "prompt 1: wrong", 0.2), "2026-01-01T00:00:00Z")
    assert cond["type"] == GATE_CONDITION
    assert (cond["status"], cond["reason"]) == ("False", "GateFailed")


def test_the_runner_runs_one_gate_per_pod_at_a_time():
    runner = GateRunner(workers=2)
    release, started = threading.Event(), threading.Event()
    runs = []

    def work():
        runs.append(1)
        started.set()
        release.wait(10)

    try:
        assert runner.submit("pod-1", work)
        assert started.wait(10)
        assert not runner.submit("pod-1", work)  # a second event for the same pod
        assert runner.running() == {"pod-1"}
        release.set()
    finally:
        runner.shutdown()
    assert runs == [1]
    assert runner.running() == set()


def test_a_pod_that_requires_api_keys_names_the_secret_and_key_of_its_keys_file():
    spec = parse_spec(
        {
            "image": "a:1",
            "modelApiKeySecretRef": {"name": "model", "key": "token"},
            "clients": {"apiKeysSecretRef": {"name": "clients", "key": "keys"}},
        }
    )
    template = pod_template(Owner("demo", "ns", "u"), spec)
    assert api_keys_secret(template) == ("clients", "keys")
    plain = pod_template(Owner("demo", "ns", "u"), parse_spec({"image": "a:1"}))
    assert api_keys_secret(plain) is None


def test_the_gate_asks_as_the_first_client_of_the_keys_file():
    text = "# rotated 2026-01\n\n  gate : key-of-the-gate-client \nother:another-client-key\n"
    assert first_client_key(text) == "key-of-the-gate-client"
    assert first_client_key("# nothing\n") is None
    assert first_client_key("") is None


@contextlib.contextmanager
def _recording_server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A local HTTP server answering a chat turn; records (method, Authorization) per call."""
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.headers.get("Authorization")))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"reply": "echo: hello", "session_id": "s-1"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_DELETE = _answer

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_prompt_and_its_cleanup_carry_the_client_key_over_http():
    with _recording_server() as (url, seen):
        answer = ask(url, HELLO, headers={"Authorization": "Bearer k-1"})
        assert answer.session_id == "s-1"
        forget(url, "s-1", headers={"Authorization": "Bearer k-1"})
        ask(url, HELLO)
    assert seen == [("POST", "Bearer k-1"), ("DELETE", "Bearer k-1"), ("POST", None)]
