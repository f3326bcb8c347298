"""``gpumgr pull NAME... | --all [--dry-run] [--refresh] [--json] [--simulate]``: fetch vLLM weights.

Runs the same ``gpumgr.weights.resolve_snapshot`` the daemon runs before a launch, so a pull
here and a start there share one cache, one lock per repository and one notion of "complete".
Progress goes to stderr: a rich bar (bytes, rate, ETA) on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from gpumgr.cli.common import config_dir_option, emit_json, load_config_from_ctx
from gpumgr.config import Config, Provider
from gpumgr.errors import GpumgrError, InputError, WeightsError

if TYPE_CHECKING:  # gpumgr.weights imports huggingface_hub: only `pull` itself pays for it
    from gpumgr.weights import DownloadProgress, ProgressCallback, PullPlan, Snapshot

PLAIN_STEP_PERCENT = 10.0
PHASE_DOWNLOADING = "downloading"  # gpumgr.weights.progress.PHASE_DOWNLOADING, without the import


def format_bytes(n: float) -> str:
    from gpumgr.weights.progress import format_bytes as fmt

    return fmt(n)


def select_providers(cfg: Config, names: tuple[str, ...], pull_all: bool) -> list[Provider]:
    """The vLLM providers to pull; unknown or non-vLLM names are input errors."""
    if pull_all and names:
        raise InputError("give provider names or --all, not both")
    if pull_all:
        chosen = [p for p in cfg.vllm_providers if p.runs_here]
        if not chosen:
            raise InputError("no active or standby vLLM provider to pull")
        return chosen
    if not names:
        raise InputError("name at least one vLLM provider, or pass --all")
    vllm = sorted(p.name for p in cfg.vllm_providers)
    out: list[Provider] = []
    for name in names:
        p = cfg.providers.get(name)
        if p is None:
            raise InputError(f"unknown provider {name!r} (vLLM providers: {', '.join(vllm)})")
        if not p.is_vllm:
            raise InputError(f"{name} is of type {p.type.value}: only vLLM providers have weights to pull")
        out.append(p)
    return out


class _ProgressView:
    """One bar per repository on a terminal; otherwise a line per phase and per 10 %."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self._console = console
        self._rich = enabled and console.is_terminal
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._last_step: dict[str, float] = {}
        self._lock = threading.Lock()
        self._enabled = enabled

    @contextmanager
    def running(self) -> Iterator[None]:
        if not self._rich:
            yield
            return
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TimeRemainingColumn(), console=self._console, transient=False,
        )
        with self._progress:
            yield

    def callback(self, label: str) -> ProgressCallback | None:
        if not self._enabled:
            return None

        def on_progress(ev: DownloadProgress) -> None:
            if self._progress is not None:
                self._rich_update(label, ev)
            else:
                self._plain(label, ev)

        return on_progress

    def _rich_update(self, label: str, ev: DownloadProgress) -> None:
        assert self._progress is not None
        with self._lock:
            task = self._tasks.get(label)
            if task is None:
                task = self._tasks[label] = self._progress.add_task(label, total=ev.total_bytes or None)
        self._progress.update(task, completed=ev.done_bytes, total=ev.total_bytes or None,
                              description=f"{label} ({ev.phase})")

    def _plain(self, label: str, ev: DownloadProgress) -> None:
        with self._lock:
            if ev.phase == PHASE_DOWNLOADING:
                step = ev.percent // PLAIN_STEP_PERCENT
                if self._last_step.get(label) == step:
                    return
                self._last_step[label] = step
                rate = f" at {format_bytes(ev.rate_bytes_per_s)}/s" if ev.rate_bytes_per_s else ""
                eta = f", {ev.eta_s:.0f} s left" if ev.eta_s is not None else ""
                text = (f"{label}: {ev.percent:.0f}% of {format_bytes(ev.total_bytes)}{rate}{eta}")
            else:
                text = f"{label}: {ev.detail()}"
            self._console.print(text, highlight=False, soft_wrap=True)


def _plan_json(label: str, plan: PullPlan) -> dict[str, Any]:
    return {
        "provider": label, "repo": plan.spec.repo, "revision": plan.spec.revision,
        "commit": plan.commit, "quant_method": plan.quant_method,
        "files": [{"path": f.path, "size_bytes": f.size_bytes, "cached": f.cached} for f in plan.files],
        "total_bytes": plan.total_bytes, "needed_bytes": plan.needed_bytes,
        "free_bytes": plan.free_bytes,
    }


def _snapshot_json(label: str, snap: Snapshot) -> dict[str, Any]:
    return {
        "provider": label, "repo": snap.repo, "revision": snap.revision, "commit": snap.commit,
        "path": str(snap.path), "files": list(snap.files), "total_bytes": snap.total_bytes,
        "downloaded_bytes": snap.downloaded_bytes,
    }


def _print_plan(console: Console, label: str, plan: PullPlan, hub_dir: Path) -> None:
    console.print(f"{label}: {plan.spec.repo} @ {plan.spec.revision} = commit {plan.commit} "
                  f"(quantization: {plan.quant_method or 'none'})", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("cached")
    for f in plan.files:
        table.add_row(f.path, format_bytes(f.size_bytes), "yes" if f.cached else "no")
    console.print(table)
    console.print(f"{label}: total {format_bytes(plan.total_bytes)} ({plan.total_bytes} bytes) in "
                  f"{len(plan.files)} files, to fetch {format_bytes(plan.needed_bytes)}, "
                  f"free {format_bytes(plan.free_bytes)} in {hub_dir}", highlight=False, soft_wrap=True)


def _combine(errors: list[tuple[str, GpumgrError]], attempted: int) -> GpumgrError:
    """One error (one line) for the whole command; the first failure's type sets the exit code."""
    if len(errors) == 1:
        return errors[0][1]
    first = errors[0][1]
    text = "; ".join(f"{name}: {err}" for name, err in errors)
    combined = type(first)(f"{len(errors)} of {attempted} pulls failed: {text}")
    return combined


@click.command("pull")
@click.argument("names", nargs=-1, metavar="NAME...")
@click.option("--all", "pull_all", is_flag=True, help="Every active or standby vLLM provider.")
@click.option("--dry-run", is_flag=True, help="Print sizes and what would be fetched; fetch nothing.")
@click.option("--refresh", is_flag=True,
              help="Ask the hub what the revision points to now, even if a complete snapshot exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--simulate", is_flag=True, help="Fetch from the simulated hub (also GPUMGR_SIMULATE=1).")
@config_dir_option
@click.pass_context
def pull(ctx: click.Context, names: tuple[str, ...], pull_all: bool, dry_run: bool, refresh: bool,
         as_json: bool, simulate: bool, config_dir: str | None) -> None:
    """Download the weights of vLLM providers before they are started (exit 2 on a bad request:
    unknown repo or revision, gated without token, not AWQ, disk too small; 1 on network failure)."""
    from gpumgr.weights.context import WeightsContext

    cfg = load_config_from_ctx(ctx, config_dir, simulate=simulate)
    providers = select_providers(cfg, names, pull_all)
    out = Console(highlight=False, markup=False)
    view = _ProgressView(Console(stderr=True, highlight=False, markup=False), enabled=not dry_run)
    results: list[dict[str, Any]] = []
    errors: list[tuple[str, GpumgrError]] = []
    summary: list[str] = []  # printed once the progress display is gone
    with ExitStack() as stack:
        endpoint = None
        if cfg.simulate:
            from gpumgr.sim.hub import hub_endpoint

            endpoint = stack.enter_context(hub_endpoint(cfg.settings.simulate.hub_endpoint))
        weights = WeightsContext.from_config(cfg, endpoint=endpoint)
        stack.enter_context(view.running())
        for p in providers:
            try:
                if dry_run:
                    if weights.offline:
                        raise WeightsError("hub access is off (HF_HUB_OFFLINE): a dry run needs the hub")
                    plan = weights.plan(p)
                    results.append(_plan_json(p.name, plan))
                    if not as_json:
                        _print_plan(out, p.name, plan, weights.hub_dir)
                    continue
                snap = weights.resolve(p, progress=view.callback(p.name), refresh=refresh)
                results.append(_snapshot_json(p.name, snap))
                if not as_json:
                    how = "downloaded" if snap.downloaded_bytes else "already complete"
                    summary.append(f"{p.name}: {snap.repo} @ {snap.commit[:12]} {how}, "
                                   f"{format_bytes(snap.total_bytes)} in {len(snap.files)} files: "
                                   f"{snap.path}")
            except GpumgrError as exc:
                errors.append((p.name, exc))
                results.append({"provider": p.name, "repo": _repo_of(p), "error": str(exc)})
    for line in summary:
        out.print(line, soft_wrap=True)
    if as_json:
        emit_json({"dry_run": dry_run, "simulated": cfg.simulate, "cache_dir": str(weights.hub_dir),
                   "pulls": results})
    if errors:
        raise _combine(errors, len(providers))


def _repo_of(p: Provider) -> str | None:
    from gpumgr.weights import WeightsSpec

    try:
        return WeightsSpec.of(p).repo
    except GpumgrError:
        return None


__all__ = ["pull", "select_providers"]
