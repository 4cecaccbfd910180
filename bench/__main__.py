"""``python -m bench [--rows 1,3] [--size full|mini] [--out BENCHMARKS.md]``: run, print, write.

Each row prints one line as it finishes; the Markdown file (and its JSON twin, which keeps rows
of earlier runs that this one did not repeat) is written at the end. Exit code 0 when every row
measured something (a FAIL against a target is a result, not an error), 1 when a row could not.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path

from bench import machine, report

ROW_MODULES = {
    1: "bench.row1_blocking",
    2: "bench.row2_throughput",
    3: "bench.row3_memory",
    4: "bench.row4_short_jobs",
    5: "bench.row5_schedule",
    6: "bench.row6_budget",
    7: "bench.row7_backlog",
    # Issue 22's runs: 8 and 9 calls per job, 10 tenants' lanes, 11 reuse.
    8: "bench.row8_docs_loop",
    9: "bench.row9_calls",
    10: "bench.row10_lanes",
    11: "bench.row11_reuse",
}


def parse_rows(text: str) -> list[int]:
    rows = sorted({int(part) for part in text.replace(" ", ",").split(",") if part})
    unknown = [n for n in rows if n not in ROW_MODULES]
    if unknown or not rows:
        raise argparse.ArgumentTypeError(f"rows are {sorted(ROW_MODULES)}; got {text!r}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rows", type=parse_rows, default=sorted(ROW_MODULES))
    parser.add_argument("--size", choices=("full", "mini"), default="full")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "bench", *argv_used])
    facts = machine.facts()
    json_path = args.out.with_suffix(".json")
    rows = report.load(json_path) if args.size == "full" else {}
    failed = False
    print(f"bench: rows {args.rows}, size {args.size}; load average {facts[_LOAD]}", flush=True)
    for number in args.rows:
        started = time.monotonic()
        module = importlib.import_module(ROW_MODULES[number])
        try:
            row: report.Row = module.run(args.size)
        except Exception:
            failed = True
            print(f"row {number}: ERROR\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            continue
        row.seconds = time.monotonic() - started
        row.measured_at = machine.now()
        row.command = command
        row.machine = {k: v for k, v in facts.items() if k not in (_LOAD, "date (UTC)")}
        rows[number] = row
        print(row.line(), flush=True)
    facts["load average at end (1/5/15 min)"] = machine.load_average()
    args.out.write_text(report.render(rows, latest_machine=facts, latest_command=command))
    report.save(json_path, rows)
    print(f"wrote {args.out} and {json_path}", flush=True)
    return 1 if failed else 0


_LOAD = "load average at start (1/5/15 min)"

if __name__ == "__main__":
    sys.exit(main())
