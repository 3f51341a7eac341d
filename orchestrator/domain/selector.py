"""Which appliances a rollout targets (README: "A rollout against your own inventory").

A selector filters enabled appliances by site, tag, name and current version. Fields
combine with AND; the values of one field with OR. An absent field does not filter, so the
empty selector `{}` targets every enabled appliance. Whether an appliance is enabled is the
caller's filter, not the selector's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from orchestrator.domain.errors import OrchestratorError

SELECTOR_KEYS: Final = ("sites", "tags", "names", "current_versions")


class SelectorError(OrchestratorError, ValueError):
    """A bad selector: `field` names where (e.g. "selector.sites[1]"), `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Selector:
    """A parsed selector; an empty tuple means "no filter on this field"."""

    sites: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    current_versions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        """The normalised JSON object: only the fields that filter, values de-duplicated."""
        return {key: list(getattr(self, key)) for key in SELECTOR_KEYS if getattr(self, key)}


def _values(key: str, value: Any) -> tuple[str, ...]:
    where = f"selector.{key}"
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise SelectorError(where, f"{value!r} is not a list of strings")
    if not value:
        raise SelectorError(
            where, "[] selects nothing: leave the key out to not filter on it"
        )
    values: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise SelectorError(f"{where}[{index}]", f"{item!r} is not a non-empty string")
        if item != item.strip():
            raise SelectorError(
                f"{where}[{index}]", f"{item!r} has leading or trailing blanks"
            )
        if item not in values:
            values.append(item)
    return tuple(values)


def parse_selector(data: Mapping[str, Any] | None) -> Selector:
    """Validate a selector object. None stands for `{}` (every enabled appliance).

    Each key, when present, is a non-empty list of non-empty strings without surrounding
    blanks; duplicates are dropped, order kept. Unknown keys are refused by name; so is an
    empty list, which would be ambiguous (everything or nothing?).
    """
    if data is None:
        return Selector()
    if not isinstance(data, Mapping):
        raise SelectorError("selector", f"{data!r} is not an object")
    unknown = sorted(str(key) for key in data if key not in SELECTOR_KEYS)
    if unknown:
        others = ", ".join(repr(key) for key in unknown[1:])
        also = f"; also unknown: {others}" if others else ""
        raise SelectorError(
            f"selector.{unknown[0]}",
            f"unknown key{also} (known keys: {', '.join(SELECTOR_KEYS)})",
        )
    fields = {key: _values(key, data[key]) for key in SELECTOR_KEYS if key in data}
    return Selector(**fields)


def matches(
    selector: Selector,
    name: str,
    site: str,
    tags: Iterable[str],
    current_version: str | None,
) -> bool:
    """Whether an appliance is targeted by `selector`.

    Exact, case-sensitive comparisons. sites/names/current_versions: the appliance's value
    is one of the listed ones; tags: the appliance has ANY of the listed tags. An appliance
    whose current version is unknown (None) never matches a current_versions filter.
    """
    if selector.sites and site not in selector.sites:
        return False
    if selector.names and name not in selector.names:
        return False
    if selector.current_versions and current_version not in selector.current_versions:
        return False
    return not selector.tags or not set(selector.tags).isdisjoint(tags)
