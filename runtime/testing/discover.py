"""From the paths a user names to ``Suite``s: test files, their runbooks and sub-runbooks.

A path is a test file (``NAME.test.yaml``, ``.test.yml`` or ``.test.json``), a runbook file
(its cases are in ``NAME.test.yaml`` beside it), or a directory (every test file under it).
A test file's runbook is the one its ``runbook:`` names (relative to the test file), else
``NAME.yaml`` (``.yml``, ``.json``) beside it. The runbooks a ``run-runbook`` step starts are
looked up by id among the runbook files named on the command line, then the files beside
the runbook. Every problem is a ``FileProblem``: a path that names nothing, a file that
cannot be read, an invalid runbook, a sub-runbook found nowhere, a bad test file.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from runtime.documents.validate import validate_document
from runtime.model.errors import ValidationError
from runtime.model.wire import load_document, parse_data
from runtime.shell.step_types import StepTypes
from runtime.testing.reading import Reader, StepInfo
from runtime.testing.spec import FileProblem, Suite

TEST_SUFFIXES: Final = (".test.yaml", ".test.yml", ".test.json")
RUNBOOK_SUFFIXES: Final = (".yaml", ".yml", ".json")

Loaded = tuple[pathlib.Path, dict[str, Any]]


def is_test_file(path: pathlib.Path) -> bool:
    """Whether the file holds runbook tests (by its name), not a runbook."""
    return path.name.lower().endswith(TEST_SUFFIXES)


def find_test_files(paths: Sequence[str]) -> tuple[list[pathlib.Path], list[pathlib.Path], list[FileProblem]]:
    """The test files the paths name, the runbook files among them, and the paths that name none."""
    tests: list[pathlib.Path] = []
    runbooks: list[pathlib.Path] = []
    problems: list[FileProblem] = []
    for name in paths:
        path = pathlib.Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_test_file(p) and p.is_file())
            tests += found
            if not found:
                problems.append(FileProblem(name, "$", "no test files (NAME.test.yaml) in this directory"))
        elif not path.is_file():
            problems.append(FileProblem(name, "$", "no such file"))
        elif is_test_file(path):
            tests.append(path)
        else:
            runbooks.append(path)
            beside = _first_existing(path.parent, _stem(path), TEST_SUFFIXES)
            if beside is None:
                problems.append(FileProblem(name, "$", f"no test file beside it (looked for {_stem(path)}.test.yaml)"))
            else:
                tests.append(beside)
    return _unique(tests), runbooks, problems


def load_suite(test: pathlib.Path, given: Sequence[pathlib.Path],
               types: StepTypes | None = None) -> tuple[Suite | None, list[FileProblem]]:
    """The suite of a test file, or every problem that keeps it from running."""
    types = types or StepTypes()
    data, problems = _read(test, parse_data)
    if problems:
        return None, problems
    runbook_path, problems = _runbook_path(test, data)
    if runbook_path is None:
        return None, problems
    runbook, subs, problems = _runbooks(runbook_path, given, types)
    if problems:
        return None, problems
    reader = Reader(step_infos(runbook, subs))
    base_url, secrets, cases = reader.file(data)
    if reader.problems:
        return None, [FileProblem(str(test), p.path, p.message) for p in reader.problems]
    return Suite(test, runbook_path, runbook, subs, cases, base_url, secrets), []


def load_plan(runbook_path: pathlib.Path, replies: pathlib.Path | None, input: Any,
              given: Sequence[pathlib.Path] = (), types: StepTypes | None = None) -> tuple[Suite | None, list[FileProblem]]:
    """A suite of one case, ``plan``: the runbook with the input and a replies file's replies,
    events, approvals and context."""
    runbook, subs, problems = _runbooks(runbook_path, given, types or StepTypes())
    if problems:
        return None, problems
    data: Any = {}
    if replies is not None:
        data, problems = _read(replies, parse_data)
        if problems:
            return None, problems
    reader = Reader(step_infos(runbook, subs))
    base_url, secrets, case = reader.plan_file(data, input)
    if reader.problems:
        return None, [FileProblem(str(replies), p.path, p.message) for p in reader.problems]
    return Suite(replies or runbook_path, runbook_path, runbook, subs, (case,), base_url, secrets), []


def _runbooks(path: pathlib.Path, given: Sequence[pathlib.Path],
              types: StepTypes) -> tuple[dict[str, Any], tuple[dict[str, Any], ...], list[FileProblem]]:
    """The runbook, valid, and the valid sub-runbooks it may start; or the problems."""
    runbook, problems = _valid_runbook(path, types)
    if runbook is None:
        return {}, (), problems
    subs, problems = _sub_runbooks((path, runbook), _pool(path, given), types)
    return runbook, tuple(doc for _, doc in subs), problems


def step_infos(document: Mapping[str, Any], subs: Iterable[Mapping[str, Any]] = ()) -> dict[str, StepInfo]:
    """Each step a test file may name: the runbook's by id, a sub-runbook's as runbook/step."""
    infos = {str(step["id"]): _info(step) for step in document["steps"]}
    for sub in subs:
        if sub["id"] != document["id"]:
            infos |= {f"{sub['id']}/{step['id']}": _info(step) for step in sub["steps"]}
    return infos


def _info(step: Mapping[str, Any]) -> StepInfo:
    config = step.get("config") or {}
    kind = str(step["type"])
    if kind == "loop" and isinstance(config.get("step"), Mapping):
        body = config["step"]
        return StepInfo(kind, _info({**body, "id": ""}).calls)
    if kind == "call-service":
        return StepInfo(kind, "grpc" if config.get("protocol") == "grpc" else "http")
    if kind == "human-approval":
        approval = step.get("approvalConfig") or config
        return StepInfo(kind, "http" if "notify" in approval else None)
    return StepInfo(kind, None)


# ---------------------------------------------------------------------- files
def _read(path: pathlib.Path, parse: Any) -> tuple[Any, list[FileProblem]]:
    try:
        return parse(path.read_bytes()), []
    except OSError as exc:
        return None, [FileProblem(str(path), "$", f"cannot read: {exc.strerror}")]
    except ValidationError as exc:
        return None, [FileProblem(str(path), p.path, p.message) for p in exc.problems]


def _runbook_path(test: pathlib.Path, data: Any) -> tuple[pathlib.Path | None, list[FileProblem]]:
    named = data.get("runbook") if isinstance(data, Mapping) else None
    if named is not None:
        path = test.parent / str(named)
        if isinstance(named, str) and path.is_file():
            return path, []
        return None, [FileProblem(str(test), "runbook", f"no runbook file {path}")]
    stem = _stem(test)
    found = _first_existing(test.parent, stem, RUNBOOK_SUFFIXES)
    if found is None:
        return None, [FileProblem(str(test), "$", f"no runbook beside it (looked for {stem}.yaml, .yml, .json); "
                                                  "name it with 'runbook:'")]
    return found, []


def _valid_runbook(path: pathlib.Path, types: StepTypes) -> tuple[dict[str, Any] | None, list[FileProblem]]:
    document, problems = _read(path, load_document)
    if problems:
        return None, problems
    found = [FileProblem(str(path), p.path, p.message) for p in validate_document(document, types)]
    return (None, found) if found else (document, [])


def _pool(runbook: pathlib.Path, given: Sequence[pathlib.Path]) -> list[pathlib.Path]:
    """Where sub-runbooks are looked for: the files given, then the runbook's neighbours."""
    beside = sorted(p for p in runbook.parent.iterdir()
                    if p.is_file() and p.suffix.lower() in RUNBOOK_SUFFIXES and not is_test_file(p))
    return [path for path in _unique([*given, *beside]) if path.resolve() != runbook.resolve()]


def _sub_runbooks(root: Loaded, pool: list[pathlib.Path], types: StepTypes) -> tuple[list[Loaded], list[FileProblem]]:
    """Every runbook the root may start, through its run-runbook steps and theirs."""
    by_id = _by_id(pool)
    found: dict[str, Loaded] = {}
    problems: list[FileProblem] = []
    pending = [root]
    while pending:
        path, document = pending.pop()
        for where, child_id in _children(document, by_id):
            if child_id in found or child_id == root[1]["id"]:
                continue
            if child_id not in by_id:
                problems.append(FileProblem(str(path), where, f"runbook '{child_id}' is not among the files given "
                                                              f"nor beside {path.name}: a test cannot start it"))
                continue
            child, child_problems = _valid_runbook(by_id[child_id], types)
            problems += child_problems
            if child is not None:
                found[child_id] = (by_id[child_id], child)
                pending.append(found[child_id])
    return list(found.values()), problems


def _children(document: Mapping[str, Any], by_id: Mapping[str, pathlib.Path]) -> list[tuple[str, str]]:
    """``(path, runbook id)`` of each runbook the document's run-runbook steps start; a
    templated id may be any runbook found."""
    children = []
    for index, step in enumerate(document.get("steps") or []):
        if not isinstance(step, Mapping) or step.get("type") != "run-runbook":
            continue
        runbook_id = (step.get("config") or {}).get("runbookId")
        where = f"steps[{index}].config.runbookId"
        if isinstance(runbook_id, str) and "${" not in runbook_id:
            children.append((where, runbook_id))
        else:
            children += [(where, known) for known in by_id]
    return children


def _by_id(pool: list[pathlib.Path]) -> dict[str, pathlib.Path]:
    """The id of each file of the pool that reads as a document (the first file wins)."""
    found: dict[str, pathlib.Path] = {}
    for path in pool:
        document, problems = _read(path, load_document)
        if not problems and isinstance(document.get("id"), str):
            found.setdefault(document["id"], path)
    return found


def _stem(path: pathlib.Path) -> str:
    name = path.name
    for suffix in (*TEST_SUFFIXES, *RUNBOOK_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _first_existing(directory: pathlib.Path, stem: str, suffixes: Sequence[str]) -> pathlib.Path | None:
    for suffix in suffixes:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _unique(paths: list[pathlib.Path]) -> list[pathlib.Path]:
    seen: set[pathlib.Path] = set()
    unique = []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique
