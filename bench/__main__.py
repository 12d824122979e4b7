"""Run the benchmarks and rewrite docs/benchmarks.md: `python -m bench [NAME...] [--quick]`."""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from typing import Any

from runner.logs import configure

from .common import machine, save
from .report import write_report

#: name -> (module, what it measures); each module has run(repetitions) -> dict.
BENCHMARKS: dict[str, str] = {
    "queue": "queue overhead: no-op jobs against a raw Streams loop and peers",
    "throughput": "transcription throughput against faster-whisper alone",
    "memory": "worker peak memory by concurrency; Redis memory per job and result",
    "scale": "submitting 100,000 jobs; reclaim cost as the stream grows",
    "recovery": "crash and handoff cost on a long job",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], metavar="NAME")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repetition, for a smoke run")
    args = parser.parse_args()
    configure("json", "warning")
    names = args.names or list(BENCHMARKS)
    reps = 1 if args.quick else args.repetitions
    for name in names:
        print(f"{name}: {BENCHMARKS[name]}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        run: Callable[[int], dict[str, Any]] = module.run
        began = time.monotonic()
        result = run(reps)
        result["machine"] = machine()
        result["seconds"] = round(time.monotonic() - began, 1)
        result["when"] = time.strftime("%Y-%m-%d")
        print(f"  saved {save(name, result)}", flush=True)
    print(f"wrote {write_report()}")


if __name__ == "__main__":
    main()
