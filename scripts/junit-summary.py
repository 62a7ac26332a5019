#!/usr/bin/env python3
"""One line per test stage and a total, from the stages' junit XML files, in the plain
"N passed, N failed, N skipped" form CI reads.

Arguments, four per stage: NAME EXIT_STATUS SECONDS "JUNIT_FILE ...". A stage that failed
outside any test (setup, pytest exit 5, a VM that did not boot) counts as one failure.
"""
import sys
import xml.etree.ElementTree as ET

args, total = sys.argv[1:], {"passed": 0, "failed": 0, "skipped": 0}
for i in range(0, len(args), 4):
    name, rc, secs, files = args[i], int(args[i + 1]), args[i + 2], args[i + 3].split()
    n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in files:
        try:
            for suite in ET.parse(path).getroot().iter("testsuite"):
                for key in n:
                    n[key] += int(suite.get(key, 0))
        except (OSError, ET.ParseError):
            pass
    failed = n["failures"] + n["errors"]
    if rc and not failed:
        failed = 1  # the stage failed outside any test (setup, pytest exit 5, a VM that did not boot)
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    verdict = "ok" if rc == 0 else f"FAILED (exit {rc})"
    print(f"  {name:9} {verdict:16} {passed} passed, {failed} failed, {n['skipped']} skipped"
          f" in {secs} s")
    total["passed"] += passed
    total["failed"] += failed
    total["skipped"] += n["skipped"]
print(f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
