"""The test suite's cost and robustness: both tiers timed alone with their slowest tests, line coverage of
``streamtune/`` per tier, and (``--matrix``) both tiers under other test seeds and thread counts.

    python bench/suite.py [--coverage] [--write]     # `make test` and `make test-e2e`, timed; 15 slowest each
    python bench/suite.py --matrix [--write]         # STREAMTUNE_TEST_SEED 0/1/2 x STREAMTUNE_TEST_THREADS 1/2

Runs pytest as the Makefile targets do (setup already done: `make setup`), each tier in its own process, nothing
else running (it waits for a quiet machine and records what other processes used). The matrix re-runs both tiers
six times (about six times the suite); every cell must pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TIERS = {"fast (`make test`)": "not e2e", "second (`make test-e2e`)": "e2e"}


@dataclass
class TierRun:
    tier: str
    wall_s: float
    others: float
    tests: int
    failed: int
    skipped: int
    pytest_s: float
    slowest: list[tuple[float, str]] = field(default_factory=list)
    coverage: dict | None = None  # coverage.py's JSON report

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.skipped


def run_tier(tier: str, marker: str, env: dict, coverage_dir: Path | None = None) -> TierRun:
    from bench import Watch

    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, f"--junitxml={junit}"]
        if coverage_dir is not None:
            # Entry points run as subprocesses too (console commands, SIGTERM resume, DDP): coverage's own
            # subprocess patch measures them, writing beside an absolute data file whatever their cwd; a process
            # killed with SIGKILL records nothing, which only under-counts the second tier. No `sigterm = true`:
            # coverage's handler ends the process, and the pre-emption callback chains to the handler it found.
            rc = coverage_dir / "coveragerc"
            rc.write_text(f"[run]\nsource = streamtune\nparallel = true\npatch = subprocess\n"
                          f"data_file = {coverage_dir / '.coverage'}\n")
            cmd += ["--cov=streamtune", f"--cov-config={rc}", f"--cov-report=json:{coverage_dir / 'coverage.json'}",
                    "--cov-report=term:skip-covered"]
        with Watch() as watch:
            proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        cases = [(float(c.get("time", 0)), f"{c.get('classname', '').replace('.', '/')}.py::{c.get('name')}")
                 for c in suite.iter("testcase")]
        cov = json.loads((coverage_dir / "coverage.json").read_text()) if coverage_dir is not None else None
        return TierRun(tier, watch.seconds, watch.others, int(suite.get("tests")),
                       int(suite.get("failures")) + int(suite.get("errors")), int(suite.get("skipped")),
                       float(suite.get("time")), sorted(cases, reverse=True)[:15], cov)


def _percent(cov: dict) -> float:
    return cov["totals"]["percent_covered"]


def _lines(cov: dict) -> dict[str, set[int]]:
    return {name: set(f["executed_lines"]) for name, f in cov["files"].items()}


def combined_percent(runs: list[TierRun]) -> tuple[float, list[tuple[str, int]]]:
    """Line coverage of both tiers together, and the files whose lines only the second tier runs (count)."""
    fast, second = (_lines(r.coverage) for r in runs)
    files = runs[0].coverage["files"]
    statements = sum(f["summary"]["num_statements"] for f in files.values())
    executed = sum(len(fast.get(n, set()) | second.get(n, set())) for n in files)
    only_second = sorted(((n, len(second.get(n, set()) - fast.get(n, set()))) for n in files),
                         key=lambda x: -x[1])
    return 100 * executed / statements, [x for x in only_second if x[1] > 0]


def timing_section(runs: list[TierRun]) -> str:
    lines = ["| tier | tests | passed | skipped | failed | pytest's time | wall time (pytest start to exit) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.tier} | {r.tests} | {r.passed} | {r.skipped} | {r.failed} | {r.pytest_s / 60:.1f} min "
                     f"| {r.wall_s / 60:.1f} min |")
    total = sum(r.wall_s for r in runs)
    out = [f"`python bench/suite.py{' --coverage' if runs[0].coverage else ''} --write`: each tier alone, as "
           f"`make test` / `make test-e2e` run it (setup done); other processes used "
           f"{max(r.others for r in runs):.2f} cores at most. Both tiers: {total / 60:.1f} min"
           + (" (with coverage.py tracing every line, subprocesses included: without it the suite is faster; the "
              "matrix below times it plain)." if runs[0].coverage else "."), "", *lines]
    if runs[0].coverage:
        both, only_second = combined_percent(runs)
        out += ["", f"Line coverage of `streamtune/` (pytest-cov): fast tier {_percent(runs[0].coverage):.1f} %, "
                f"second tier {_percent(runs[1].coverage):.1f} %, both {both:.1f} %. Lines only the second tier "
                "runs: " + ", ".join(f"`{n}` {k}" for n, k in only_second[:8]) + "."]
    for r in runs:
        out += ["", f"Slowest tests of the {r.tier} tier (setup of session fixtures lands on the first test that "
                "uses them):", "", "| s | test |", "|---|---|"]
        out += [f"| {t:.1f} | `{name}` |" for t, name in r.slowest]
    return "\n".join(out)


def matrix_section(cells: dict[tuple[int, int], list[TierRun]]) -> str:
    lines = ["| STREAMTUNE_TEST_SEED | threads | fast tier | second tier |", "|---|---|---|---|"]
    for (seed, threads), runs in sorted(cells.items()):
        row = [f"{'green' if r.failed == 0 else f'**{r.failed} failed**'} ({r.passed} passed, "
               f"{r.pytest_s / 60:.1f} min)" for r in runs]
        lines.append(f"| {seed} | {threads} | {row[0]} | {row[1]} |")
    return "\n".join([
        "`python bench/suite.py --matrix --write`: both tiers with every generated corpus and training seed shifted "
        "(STREAMTUNE_TEST_SEED) and torch on 1 or 2 threads (STREAMTUNE_TEST_THREADS): other trained models, other "
        "floating-point paths. A test may only assert what holds for all of them.", "", *lines])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", action="store_true", help="both tiers for seeds 0 1 2 x threads 1 2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--coverage", action="store_true", help="line coverage of streamtune/ per tier (pytest-cov)")
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = parser.parse_args(argv)

    from bench import publish, wait_quiet

    if args.matrix:
        cells, failed = {}, 0
        for seed in args.seeds:
            for threads in args.threads:
                env = {"STREAMTUNE_TEST_SEED": str(seed), "STREAMTUNE_TEST_THREADS": str(threads)}
                wait_quiet()
                cells[seed, threads] = [run_tier(t, m, env) for t, m in TIERS.items()]
                failed += sum(r.failed for r in cells[seed, threads])
                print(matrix_section(cells), flush=True)
        publish("Test suite across seeds and threads", matrix_section(cells), args.write)
        return 1 if failed else 0
    wait_quiet()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for k, (tier, marker) in enumerate(TIERS.items()):
            cov_dir = Path(tmp) / str(k) if args.coverage else None
            if cov_dir:
                cov_dir.mkdir()
            runs.append(run_tier(tier, marker, {}, cov_dir))
    publish("Test suite", timing_section(runs), args.write)
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
