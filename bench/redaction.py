"""Benchmark of secret redaction per status document: what masking partial secrets costs.

Not a test. The publisher redacts every free-text field of a backend (``detail``, ``base_url``,
each ``unavailable_models`` reason) on every change it publishes, so the redactor runs on every
status flush. This builds a document of ``--backends`` backends with realistic details (probe
errors, some echoing a cut key) and times, per document:

- ``whole values``: one regex of the whole secret values (what a redactor without fragment
  masking costs: the baseline);
- ``fragments``: ``gpumgr.redaction.redactor_for`` (whole values, every 8-character window of
  every secret, and the edge check);
- ``render``: the publisher's render and serialisation of that document (``StatusDocument``
  build + ``model_dump_json``), for scale.

Prints a table and writes ``bench/results/redaction.json``.

    .venv/bin/python bench/redaction.py [--backends 16] [--secrets 5] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets as rnd
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from _report import header, print_rows, results_path, write_result

from gpumgr.redaction import REDACTED, redactor_for
from gpumgr.status.document import BackendStatus, DaemonInfo, StatusDocument

RESULTS = results_path("redaction")


def texts_of_a_document(n_backends: int, keys: list[str]) -> list[str]:
    """Every string the publisher redacts in one document."""
    out: list[str] = []
    for i in range(n_backends):
        key = keys[i % len(keys)]
        details = [
            f"HTTP 401 from https://ollama.com/api/chat: {{\"error\": \"invalid key {key[:24]}\"}}",
            "health 200 in 2.1 ms; 3 requests waiting, KV cache 41 % used",
            "connection refused (http://127.0.0.1:8001/health); retrying in 4 s",
            "loading weights: 7.4 of 15.2 GiB, eta 38 s (Qwen/Qwen2.5-Coder-7B-Instruct-AWQ)",
        ]
        out.append(details[i % len(details)])
        out.append(f"http://127.0.0.1:{8000 + i}")
        out.append("not pulled: run `ollama pull llama3.1:latest` on the host")
    return out


def whole_values_only(keys: list[str]) -> Callable[[str], str]:
    pattern = re.compile("|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True)))
    return lambda text: pattern.sub(REDACTED, text)


def per_document_us(redact: Callable[[str], str], texts: list[str], repeat: int) -> float:
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            for t in texts:
                redact(t)
        samples.append((time.perf_counter() - start) / repeat * 1e6)
    return statistics.median(samples)


def render_us(n_backends: int, repeat: int) -> float:
    daemon = DaemonInfo(pid=os.getpid(), started_at=datetime.now(UTC))
    backends = [BackendStatus(name=f"b{i}", type="vllm", base_url=f"http://127.0.0.1:{8000 + i}",
                              state="up", models=[f"m{i}"], detail="health 200 in 2.1 ms")
                for i in range(n_backends)]
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(max(1, repeat // 10)):
            StatusDocument.build(generated_at=datetime.now(UTC), daemon=daemon, gpus=[],
                                 backends=backends, seq=1, epoch="e").to_json_bytes()
        samples.append((time.perf_counter() - start) / max(1, repeat // 10) * 1e6)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", type=int, default=16)
    ap.add_argument("--secrets", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    keys = [f"sk-live-{rnd.token_hex(14)}"[:35] for _ in range(args.secrets)]
    texts = texts_of_a_document(args.backends, keys)
    new = redactor_for(keys)
    assert all(k[:24] not in new(t) for t in texts for k in keys)
    baseline = per_document_us(whole_values_only(keys), texts, args.repeat)
    fragments = per_document_us(new, texts, args.repeat)
    render = render_us(args.backends, args.repeat)
    result = {
        **header("redaction"),
        "backends": args.backends, "secrets": args.secrets, "strings_per_document": len(texts),
        "whole_values_us_per_document": round(baseline, 1),
        "fragments_us_per_document": round(fragments, 1),
        "render_us_per_document": round(render, 1),
    }
    print(f"redaction per status document ({args.backends} backends, {len(texts)} strings, "
          f"{args.secrets} secrets of 35 characters)")
    print_rows([
        ("whole values only (baseline)", f"{baseline:.1f} µs"),
        ("whole values + 8-char fragments", f"{fragments:.1f} µs"),
        ("document render + JSON (scale)", f"{render:.1f} µs"),
    ], indent="  ")
    write_result(result, RESULTS)


if __name__ == "__main__":
    main()
