"""`make bench`: runs every benchmark (tests/bench/bench_*.py) with the benchmark environment and
gathers their reports (docs/performance/<topic>.md) into docs/performance.md.

    make bench                      # all of them
    make bench BENCH=nft            # one
    python tests/bench/run.py --gather-only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADER = """# Performance

Benchmarks of the collection's modules side by side with the raw tools (`nft -f`, `iptables-restore`,
`ipvsadm -R`) and with the peers users pick today (`community.general.modprobe`, `ansible.builtin.iptables`,
`community.general.iptables_state`, templated `nft -f`, `ipvsadm` in a command loop), measured in one run on
one machine, reported as medians of several runs and as ratios. They are benchmarks, not timed tests:
`make test` does not run them. Reproduce all with `make bench`, or one with `make bench BENCH=<topic>`.
Each section below is written by its benchmark (tests/bench/bench_<topic>.py) into docs/performance/<topic>.md.

"""


def gather() -> None:
    parts = [HEADER]
    for report in sorted((ROOT / "docs" / "performance").glob("*.md")):
        text = report.read_text().strip()
        # one level down: each report's own title becomes a section
        parts.append("\n".join(("#" + line) if line.startswith("#") else line for line in text.splitlines()) + "\n")
    (ROOT / "docs" / "performance.md").write_text("\n".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--gather-only", action="store_true")
    args = parser.parse_args()
    rc = 0
    if not args.gather_only:
        for script in sorted((ROOT / "tests" / "bench").glob("bench_*.py")):
            if args.only and script.stem != f"bench_{args.only}":
                continue
            print(f"==> {script.relative_to(ROOT)}", flush=True)
            rc |= subprocess.run([sys.executable, str(script)], cwd=ROOT, check=False).returncode
    gather()
    return rc


if __name__ == "__main__":
    sys.exit(main())
