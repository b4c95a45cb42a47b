"""JUnit XML of a ``runbooks test`` run, as CI servers read it.

One ``<testsuite>`` per test file, one ``<testcase>`` per case (``classname``: the runbook's
id, ``time``: real seconds, and the virtual time as the property ``virtualMs``); a failing
case has a ``<failure>`` with the first thing it missed as its message and every line of the
report as its text. A file that cannot be run is a suite with one ``<testcase>`` in
``<error>``, listing its problems.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.etree import ElementTree as ET

from gateway.case_report import failure_lines, mismatch_text
from runtime.testing import CaseResult, FileProblem


def junit_xml(results: Sequence[CaseResult], problems: Sequence[FileProblem]) -> bytes:
    root = ET.Element("testsuites", name="runbooks test")
    for file in dict.fromkeys(str(r.suite.path) for r in results):
        cases = [r for r in results if str(r.suite.path) == file]
        suite = _suite(root, file, len(cases), sum(not r.passed for r in cases), 0, sum(r.wall_s for r in cases))
        for result in cases:
            case = ET.SubElement(suite, "testcase", name=result.case.name, classname=result.suite.runbook_id,
                                 time=f"{result.wall_s:.3f}")
            properties = ET.SubElement(case, "properties")
            ET.SubElement(properties, "property", name="virtualMs", value=str(result.outcome.virtual_ms))
            if not result.passed:
                failure = ET.SubElement(case, "failure", message=mismatch_text(result.mismatches[0]),
                                        type="expectation")
                failure.text = "\n".join(failure_lines(result))
    for file in dict.fromkeys(p.file for p in problems):
        suite = _suite(root, file, 1, 0, 1, 0.0)
        case = ET.SubElement(suite, "testcase", name="(the file)", classname=file, time="0")
        lines = [str(p) for p in problems if p.file == file]
        error = ET.SubElement(case, "error", message=lines[0], type="bad file")
        error.text = "\n".join(lines)
    _counts(root)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text


def _suite(root: ET.Element, name: str, tests: int, failures: int, errors: int, seconds: float) -> ET.Element:
    return ET.SubElement(root, "testsuite", name=name, tests=str(tests), failures=str(failures),
                         errors=str(errors), skipped="0", time=f"{seconds:.3f}")


def _counts(root: ET.Element) -> None:
    for field in ("tests", "failures", "errors"):
        root.set(field, str(sum(int(suite.get(field, "0")) for suite in root)))
