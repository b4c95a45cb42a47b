"""``KindSpec``: what a step type says about a runbook document before anything runs.

Each step type is registered (``runtime.shell.step_types``) with a spec from its kind's
module: the ``kind`` (how the execution core runs its steps), the check of its config, the
step fields its config may be written under, and the steps its config names: which must
exist (``check_steps``) and which it decides, so that they wait for it (``decides``).
Document validation (``runtime.documents.validate``) asks the spec and knows no type by name.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import attrs

from runtime.core.kinds import StepKind
from runtime.model.errors import Problem


class KnownType(Protocol):
    """A step type as validation sees it: its name, its spec, and whether it runs one
    executor per attempt (only such a type may be a loop's body)."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> KindSpec: ...

    @property
    def executor(self) -> Any: ...


class TypeLookup(Protocol):
    """The step types a runtime knows, by name."""

    def get(self, name: str) -> KnownType | None: ...

    def names(self) -> list[str]: ...


ConfigCheck = Callable[[Mapping[str, Any], str, TypeLookup], list[Problem]]
"""(config, its path, the known types) -> every problem of the config."""

StepsCheck = Callable[[Mapping[str, Any], str, str | None, Collection[str]], list[Problem]]
"""(config, its path, the step's own id (None: not a string), the ids of the document's
steps) -> the problems of the step ids the config names."""


def no_problems(*args: Any) -> list[Problem]:
    return []


def no_steps(config: Mapping[str, Any]) -> list[str]:
    return []


def ignoring_types(check: Callable[[Mapping[str, Any], str], list[Problem]]) -> ConfigCheck:
    """A config check that needs no other type, as a ``ConfigCheck``."""
    return lambda config, path, types: check(config, path)


@attrs.frozen
class KindSpec:
    kind: StepKind
    check_config: ConfigCheck = no_problems
    config_aliases: tuple[str, ...] = ()  # fields that hold the config instead of ``config`` when present
    check_steps: StepsCheck = no_problems
    decides: Callable[[Mapping[str, Any]], list[str]] = no_steps  # from a config as written, valid or not

    def config_field(self, step: Mapping[str, Any]) -> str:
        """The field of ``step`` (a step as written) that holds its config."""
        return next((key for key in self.config_aliases if key in step), "config")
