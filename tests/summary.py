"""Adds up the JUnit XML of every tier and prints the one closing line: `N passed, N failed`.
Exits non-zero when anything failed, when a tier left no results, or when no test ran."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(results: Path, tiers: list[str]) -> int:
    passed = failed = skipped = 0
    missing = []
    for tier in tiers:
        report = results / f"{tier}.xml"
        if not report.exists():
            missing.append(tier)
            continue
        t_pass = t_fail = t_skip = 0
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                t_fail += 1
            elif case.find("skipped") is not None:
                t_skip += 1
            else:
                t_pass += 1
        note = "  (ran no test)" if t_pass + t_fail == 0 else ""
        print(f"  {tier:<9} {t_pass} passed, {t_fail} failed, {t_skip} skipped{note}")
        passed, failed, skipped = passed + t_pass, failed + t_fail, skipped + t_skip
    for tier in missing:
        print(f"  {tier:<9} left no results (the tier did not run to the end)")
    failed += len(missing)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2].split(",")))
