"""python -m bench.compare [--base REV] [--rounds 3] [--seconds 12] [--sessions 64]
[--seps 2] [SEP ARGS...]

Before and after, in the same run: the sustained phase of ``bench.profile`` for the
commit REV (a ``git worktree`` of it) and for this checkout, alternately, ROUNDS times
each, with the same load generator (this checkout's ``bench/loadgen.py`` is copied into
the worktree). The machines are noisy (±20% from one minute to the next here), so only
runs taken in turn are compared; each line shows the CPU per 1,000 requests of every
kind of process, and the load generator's own figure (the same code on both sides) shows
how fast the machine was at that moment. A short run of each side first is not
counted (cold caches, bytecode compiled). Needs git and psutil (``'.[test]'``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_RATE = re.compile(r"sustained: (\d+) req/s, p50 ([\d.]+) ms, p99 ([\d.]+) ms")
_CPU = re.compile(r"^  (load generator|listener|SEPs|PostgreSQL)\S*.*?\s([\d.]+)$", re.M)


def _run(tree: Path, args: list[str]) -> tuple[float, float, float, dict[str, float]] | None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-m", "bench.profile", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    m = _RATE.search(out.stdout)
    if m is None:
        print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        return None
    cpu = {k: float(v) for k, v in _CPU.findall(out.stdout)}
    return float(m.group(1)), float(m.group(2)), float(m.group(3)), cpu


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--base", default="HEAD~1", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--seps", type=int, default=2)
    args, sep_args = parser.parse_known_args()
    profile_args = [
        f"--seconds={args.seconds}",
        f"--sessions={args.sessions}",
        f"--seps={args.seps}",
        *sep_args,
    ]
    tmp = Path(tempfile.mkdtemp(prefix="dispatcher-compare-"))
    base_tree = tmp / "base"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base],
        cwd=ROOT,
        check=True,
    )
    try:
        shutil.copy(ROOT / "bench" / "loadgen.py", base_tree / "bench" / "loadgen.py")
        results: dict[str, list[tuple[float, float, float, dict[str, float]]]] = {}
        for tree in (base_tree, ROOT):  # a short run each first, not counted (cold caches)
            _run(tree, [*profile_args, "--seconds=3"])
        for _ in range(args.rounds):
            for label, tree in (("base", base_tree), ("this", ROOT)):
                r = _run(tree, profile_args)
                if r is None:
                    print(f"{label}: the run failed (above)")
                    continue
                results.setdefault(label, []).append(r)
                cpu = " ".join(f"{v:.3f}" for v in r[3].values())
                print(
                    f"{label:5} {r[0]:6.0f} req/s  p50 {r[1]:5.1f} ms  p99 {r[2]:5.1f} ms  "
                    f"CPU s per 1,000 ({' / '.join(r[3])}): {cpu}  total "
                    f"{sum(r[3].values()):.3f}",
                    flush=True,
                )
        med = {k: statistics.median(x[0] for x in v) for k, v in results.items()}
        for label, rs in results.items():
            print(
                f"median {label}: {med[label]:.0f} req/s, p50 "
                f"{statistics.median(x[1] for x in rs):.1f} ms, CPU per 1,000 "
                f"{statistics.median(sum(x[3].values()) for x in rs):.3f} s"
            )
        if "base" in med and "this" in med and med["base"]:
            print(f"this / base ({args.base}): {med['this'] / med['base']:.2f}x")
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False
        )
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
