"""docs/benchmarks.md, written from the saved results of the last runs (bench/out/*.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import ROOT, load

DOC = ROOT / "docs" / "benchmarks.md"


def _s(d: dict[str, float], digits: int = 2, unit: str = "") -> str:
    return f"{d['median']:.{digits}f}{unit} ({d['low']:.{digits}f} to {d['high']:.{digits}f})"


def _ok(value: float, target: float, lower_is_better: bool = True) -> str:
    met = value <= target if lower_is_better else value >= target
    return "met" if met else "**missed**"


def _machine(m: dict[str, Any]) -> str:
    v = m["versions"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['os']}; Python {m['python']}; "
        f"runner {v['runner']}, faster-whisper {v['faster-whisper']}, "
        f"ctranslate2 {v['ctranslate2']}, redis-py {v['redis']}"
    )


def recovery_section(r: dict[str, Any]) -> list[str]:
    t = r["targets"]
    rows = [
        ("Compute with a kill at ~70 % and resume, over an uninterrupted run",
         _s(r["resume_ratio"], 3, "x"), f"≤ {t['resume_ratio']}x",
         _ok(r["resume_ratio"]["median"], t["resume_ratio"])),
        ("The same, restarting from zero (no checkpoint)", _s(r["restart_ratio"], 3, "x"),
         "for comparison", ""),
        ("Failover: kill → resumed on another worker", _s(r["failover_s"], 2, " s"),
         f"≤ lease + 2 s = {t['failover_s']:g} s",
         _ok(r["failover_s"]["median"], t["failover_s"])),
        ("Handoff: SIGTERM → resumed on another worker", _s(r["handoff_s"], 2, " s"),
         f"≤ {t['handoff_s']:g} s", _ok(r["handoff_s"]["median"], t["handoff_s"])),
    ]  # fmt: skip
    settings = ", ".join(f"`{k}={v}`" for k, v in r["settings"].items())
    return [
        "## Recovery",
        "",
        f"Measured {r['when']} on {_machine(r['machine'])}.",
        "",
        f"One {r['audio_s']:.0f}-second file (the two-minute sample four times over), real "
        f"`runner worker` processes, the bundled tiny.en model, {settings}. Engine time is "
        "`job.started` → `job.completed` on the server clock; the uninterrupted run took "
        f"{_s(r['baseline_s'], 1, ' s')}. Medians of {r['resume_ratio']['n']} runs, range in "
        "brackets.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        "A resumed job loses only the window that was open at the kill (at most 30 s of audio) "
        "plus decoding the file again; restarting from zero repeats everything done so far. "
        "Failover waits for the lease to expire (the dead worker cannot say it died); a "
        "handoff does not wait: the stopping worker checkpoints, back-dates its entry past the "
        "lease, and the next reclaim pass of any worker with a free slot takes it.",
        "",
    ]


def write_report() -> Path:
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`) from the last run of each benchmark; "
        "rerun it to reproduce on your machine. Ratios compare runs made side by side in the "
        "same invocation on the same Redis server.",
        "",
    ]
    recovery = load("recovery")
    if recovery:
        parts += recovery_section(recovery)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(parts))
    return DOC
