"""Fixtures shared by the server and HTTP-policy tests."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from mini_o3.agent.policy import Generation, SamplingParams
from mini_o3.policies.scripted import ScriptedPolicy
from mini_o3.serve import start_server


class Recorder:
    """A real policy that remembers what it was asked and answers from a script (or one fixed turn)."""

    def __init__(self, script: Any = "<think>ok</think><answer>yes</answer>") -> None:
        self.inner = ScriptedPolicy((lambda messages: script) if isinstance(script, str) else script)
        self.calls: list[tuple[list[dict[str, Any]], SamplingParams]] = []
        self.lock = threading.Lock()

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams) -> Generation:
        with self.lock:
            self.calls.append((messages, sampling))
        return self.inner.generate(messages, sampling)


@pytest.fixture
def serve():
    """Start servers for a test (`serve(policy, **options) -> (server, url)`); all are stopped after it."""
    servers = []

    def _start(policy, **options):
        server, url = start_server(policy, **options)
        servers.append(server)
        return server, url

    yield _start
    for server in servers:
        server.stop()
