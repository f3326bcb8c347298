"""Any run of 8 or more characters of a known secret is masked, not only the whole value: a key
an upstream cut in its error body (24 of 35 characters) reaches no status, SSE, status.json or
log line. Unit tests of the redactor, then a real daemon against fake clouds that echo pieces."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumgr.sim.harness import (
    FAST_HEALTH_YAML,
    FAST_LIFECYCLE_YAML,
    DaemonHarness,
    wait_for,
)
from fake_http import JsonServer, Reply, Request
from gpumgr.redaction import FRAGMENT_CHARS, REDACTED, redactor_for

KEY = "sk-live-4f9c2b7e1d8a6053ce9b7a2f41d"  # 35 characters
assert len(KEY) == 35


def _windows(secret: str, n: int = FRAGMENT_CHARS) -> list[str]:
    return [secret[i:i + n] for i in range(len(secret) - n + 1)]


def _leaks(text: str, secret: str = KEY) -> list[str]:
    return [w for w in _windows(secret) if w in text]


@pytest.mark.parametrize("piece", [
    KEY[:24], KEY[11:], KEY[5:29], KEY[:8], KEY[-8:], KEY[13:21],
], ids=["prefix-24", "suffix-24", "middle-24", "prefix-8", "suffix-8", "middle-8"])
def test_a_run_of_8_or_more_characters_is_masked_wherever_it_is(piece: str) -> None:
    redact = redactor_for([KEY, "another-secret-value"])
    text = f'HTTP 401 {{"error": "bad key {piece}", "hint": "check it"}}'
    out = redact(text)
    assert _leaks(out) == []
    assert out == text.replace(piece, REDACTED)


def test_fragments_of_two_secrets_side_by_side_and_the_whole_values() -> None:
    other = "hf_Zq81mXv0PpLkTT3aaa"
    redact = redactor_for([KEY, other])
    out = redact(f"{KEY[3:20]}{other[2:15]} and {KEY} and {other}.")
    assert _leaks(out) == [] and _leaks(out, other) == []
    assert out.endswith(f" and {REDACTED} and {REDACTED}.")


def test_shorter_runs_inside_ordinary_text_are_left_alone() -> None:
    redact = redactor_for([KEY])
    text = f"request id {KEY[10:17]}x and sk-live is a prefix"  # 7 characters, then a mismatch
    assert redact(text) == text


def test_text_that_matches_no_window_is_returned_unchanged() -> None:
    redact = redactor_for([KEY])
    text = "x" * 5000 + "sk-liv" + "e" * 100
    assert redact(text) == text


class EchoingCloud(JsonServer):
    """Answers 401 with ``cut(key)`` in its error body (the key from the Authorization header)."""

    def __init__(self, cut: Callable[[str], str]) -> None:
        super().__init__(self._answer)
        self._cut = cut

    def _answer(self, request: Request) -> Reply:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return Reply(401, {"error": f"invalid api key {self._cut(key)}... (truncated)"})


@pytest.mark.slow
def test_a_key_cut_by_the_upstream_is_masked_in_status_sse_file_and_log(tmp_path: Path) -> None:
    cuts: dict[str, Callable[[str], str]] = {
        "cut-prefix": lambda k: k[:24], "cut-middle": lambda k: k[6:30],
        "cut-suffix": lambda k: k[-24:],
    }
    clouds = {name: EchoingCloud(cut).start() for name, cut in cuts.items()}
    providers = "providers:\n" + "".join(f"""
  {name}:
    type: ollama_cloud
    base_url: {cloud.base_url}
    status: active
    requires_api_key: true
    env_var: TEST_CUT_CLOUD_KEY
    models: [m-{name}:cloud]
""" for name, cloud in clouds.items())
    daemon = DaemonHarness(tmp_path, providers,
                           FAST_HEALTH_YAML.format(restart_after_s=600) + FAST_LIFECYCLE_YAML,
                           env={"TEST_CUT_CLOUD_KEY": KEY})
    try:
        daemon.start()
        sse = daemon.sse()

        def all_refused() -> bool:
            doc = daemon.status()
            return all(b["state"] == "auth_failed" and "invalid api key" in (b["detail"] or "")
                       for b in doc["backends"])

        wait_for(all_refused, 20, "every cloud answered 401 with its piece of the key")
        assert all(c.received for c in clouds.values())
        doc = daemon.status()
        details = [b["detail"] for b in doc["backends"]]
        assert all(REDACTED in d for d in details), details
        assert daemon.status_file() is not None
        assert _leaks(json.dumps(doc)) == []
        assert daemon.stop() == 0
        sse.join()
        assert _leaks((daemon.runtime_dir / "status.json").read_text()
                      if (daemon.runtime_dir / "status.json").exists() else "") == []
        assert any("invalid api key" in json.dumps(f) for _, f in sse.frames)
        assert _leaks(sse.text()) == []
        assert _leaks(daemon.log_text()) == []
    finally:
        daemon.cleanup()
        for c in clouds.values():
            c.stop()




@settings(max_examples=300)
@given(secrets=st.lists(st.text(alphabet="abcdef0123456789-_xyz", min_size=8, max_size=48),
                        min_size=1, max_size=4),
       around=st.lists(st.text(max_size=30), min_size=2, max_size=6),
       cuts=st.lists(st.tuples(st.integers(0, 47), st.integers(8, 48)), min_size=1, max_size=5))
def test_no_window_of_a_secret_survives_whatever_text_surrounds_its_pieces(
    secrets: list[str], around: list[str], cuts: list[tuple[int, int]],
) -> None:
    pieces = [s[a:a + n] for s in secrets for a, n in cuts if len(s[a:a + n]) >= 8]
    text = around[0] + "".join(p + around[(i + 1) % len(around)] for i, p in enumerate(pieces))
    out = redactor_for(secrets)(text)
    for s in secrets:
        assert _leaks(out, s) == [], (text, out)
