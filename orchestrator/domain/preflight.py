"""Pre-flight: what an appliance's answers mean for an install of the target version.

A pre-flight looks at every targeted appliance of a rollout without installing anything
(engine/preflight.py asks the questions); `decide` turns the answers into one `Verdict`:
a result (`ok`, `warn`, `fail` or `skip`), a reason code and the appliance's own message.
Pure code, no I/O: the unit tables in tests/unit/test_preflight.py hold every rule.

The checks, in the order their problems are reported:

1. reachable, TLS as configured, credentials accepted (the login);
2. the current version (`GET /appliance`): already at the target is `skip`
   (ALREADY_AT_TARGET; the runner would skip it too, nothing else is asked);
3. the key services (`GET /services`, the strategy's `verify_services`) run;
4. `reconfigure-required` is false;
5. an update repository is configured (`GET /appliance/update-manager/repository`: a URL
   or a mounted ISO);
6. the target version is offered (`retrieve-updates`, its task followed to its result).

`fail`: the install would fail or must not be tried (the first problem found in the order
above gives the code; the others are named in the message). `warn`: a check could not
conclude (no answer in time, an answer that could not be read) while nothing failed: the
install may well work. `ok`: every check passed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from orchestrator.domain.outcome import same_version
from orchestrator.domain.strategy import PREFLIGHT_MODES, missing_services


class Result(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


RESULTS: Final = tuple(str(r) for r in Result)
# the order of results from worst to best (summaries list them so)
SEVERITY: Final = (Result.FAIL, Result.WARN, Result.SKIP, Result.OK)

# the strategy key `preflight`
MODES: Final = PREFLIGHT_MODES


@dataclass(frozen=True)
class Code:
    name: str
    result: Result
    meaning: str


_CODES: Final = (
    Code("UNREACHABLE", Result.FAIL, "no answer: connection refused, reset or timed out"),
    Code("TLS", Result.FAIL, "the certificate (or its pinned thumbprint or CA) was refused"),
    Code("CREDENTIALS", Result.FAIL,
         "the login was refused (401, 403), or the credentials reference cannot be read"),
    Code("TARGET_REFUSED", Result.FAIL,
         "the inventory's base_url breaks the target policy: nothing was sent"),
    Code("APPLIANCE_ERROR", Result.FAIL,
         "the login answered an error (5xx) or a body without a session"),
    Code("SERVICES_DOWN", Result.FAIL, "a key service (`verify_services`) is not running"),
    Code("RECONFIGURE_PENDING", Result.FAIL,
         "`reconfigure-required` is true: the last upgrade waits for a reconfigure"),
    Code("NO_REPOSITORY", Result.FAIL, "no update repository (URL or mounted ISO) is set"),
    Code("REPOSITORY_UNREACHABLE", Result.FAIL,
         "`retrieve-updates` failed: the appliance cannot read its repository"),
    Code("VERSION_NOT_OFFERED", Result.FAIL,
         "the updates the appliance lists do not include the target version"),
    Code("CHECK_INCOMPLETE", Result.WARN,
         "a check got no usable answer in time (the others passed): the install may work"),
    Code("ALREADY_AT_TARGET", Result.SKIP, "the appliance runs the target version already"),
)
CODES: Final[Mapping[str, Code]] = {c.name: c for c in _CODES}
# The prefix of a task's error_code when a `required` pre-flight left it out (SKIPPED)
TASK_CODE_PREFIX: Final = "PREFLIGHT_"


@dataclass(frozen=True)
class CallError:
    """A call that did not give an answer: `kind` is the appliance client's error kind
    (`unreachable`, `timeout`, `tls`, `unauthorized`, `forbidden`, `not_found`,
    `bad_request`, `server_error`, `service_unavailable`, `malformed_response`), or
    `credentials_ref` (the reference could not be read), `target_refused` (the target
    policy), `deadline` (the check's time ran out during this call); `message` is the
    appliance's own message when it gave one, else the client's line."""

    kind: str
    message: str
    status: int | None = None


@dataclass
class Answers:
    """What one appliance answered. A field left None was not asked (or not answered:
    its `*_error` says why)."""

    target_version: str
    verify_services: Sequence[str] = ("hms|srm", "drrest")
    login_error: CallError | None = None
    version: str | None = None
    version_error: CallError | None = None
    services: Mapping[str, bool] | None = None
    services_error: CallError | None = None
    reconfigure_required: bool | None = None
    reconfigure_error: CallError | None = None
    repository: Mapping[str, Any] | None = None
    repository_error: CallError | None = None
    # retrieve-updates: the task's final status (SUCCESS, ERROR, CANCELLED; anything else:
    # it had not ended when the check stopped following it), its error message and result
    retrieve_status: str | None = None
    retrieve_message: str | None = None
    retrieve_result: Any = None
    retrieve_error: CallError | None = None
    # the id of the retrieve-updates task the check started (not judged: recorded, so that
    # nobody takes it for an install later)
    retrieve_task_id: str | None = None
    # the check's time ran out before every question was asked
    deadline_passed: bool = False


@dataclass(frozen=True)
class Problem:
    code: str
    message: str

    @property
    def result(self) -> Result:
        return CODES[self.code].result


@dataclass(frozen=True)
class Verdict:
    result: Result
    code: str | None
    message: str
    current_version: str | None = None
    problems: tuple[Problem, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"result": str(self.result), "code": self.code, "message": self.message,
                "current_version": self.current_version}


_MESSAGE_MAX = 500


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def _connection_code(error: CallError) -> str:
    """The code of a call that failed before the appliance said anything useful."""
    if error.kind in ("unreachable", "timeout", "deadline"):
        return "UNREACHABLE"
    if error.kind == "tls":
        return "TLS"
    if error.kind in ("unauthorized", "forbidden", "credentials_ref"):
        return "CREDENTIALS"
    if error.kind == "target_refused":
        return "TARGET_REFUSED"
    return "APPLIANCE_ERROR"


def _incomplete(what: str, error: CallError) -> Problem:
    return Problem("CHECK_INCOMPLETE", f"{what}: {error.message}")


# ------------------------------------------------------------------ updates offered
_UPDATE_LISTS: Final = ("list", "updates", "items", "available_updates", "versions")
_VERSION_KEYS: Final = ("version", "update_version", "name", "id")
_BUILD_KEYS: Final = ("build", "build_number", "product_build_number")


def offered_versions(result: Any) -> list[str] | None:
    """The versions a SUCCESS retrieve-updates task's `result` lists, or None when its
    shape is not one this reader knows.

    Liberal, since the shape is not documented: the list itself, or an object holding it
    under `list`, `updates`, `items`, `available_updates` or `versions` (an empty object
    or null lists nothing); an entry is a version string or an object with `version`
    (else `update_version`, `name`, `id`), and, when it gives a build (`build`,
    `build_number`, `product_build_number`), `VERSION-BUILD` is listed as well. Entries
    without a version are passed over. No result at all (None) cannot be read: None."""
    if result is None:
        return None
    items: Any = result
    if isinstance(result, Mapping):
        found = [result[key] for key in _UPDATE_LISTS if isinstance(result.get(key), list)]
        if found:
            items = found[0]
        elif not result:
            return []
        elif isinstance(_entry_version(result), str):
            items = [result]  # a single update, not in a list
        else:
            return None
    if not isinstance(items, list):
        return None
    versions: list[str] = []
    for item in items:
        version = _entry_version(item)
        if version is None:
            continue
        versions.append(version)
        if isinstance(item, Mapping):
            build = next((item[k] for k in _BUILD_KEYS
                          if isinstance(item.get(k), str | int) and not isinstance(
                              item.get(k), bool) and str(item[k]).strip()), None)
            if build is not None and not version.endswith(f"-{build}"):
                versions.append(f"{version}-{str(build).strip()}")
    return versions


def _entry_version(item: Any) -> str | None:
    if isinstance(item, str):
        return item.strip() or None
    if isinstance(item, Mapping):
        for key in _VERSION_KEYS:
            value = item.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _offered_text(versions: Sequence[str]) -> str:
    if not versions:
        return "it offers no update"
    shown = ", ".join(versions[:5])
    more = f" and {len(versions) - 5} more" if len(versions) > 5 else ""
    return f"it offers {shown}{more}"


_REPO_BLANK = re.compile(r"^\s*$")


def _repository_problem(answers: Answers) -> Problem | None:
    repo = answers.repository
    if repo is not None:
        url = repo.get("url")
        has_url = isinstance(url, str) and not _REPO_BLANK.match(url)
        if not has_url and repo.get("mounted_iso") is not True:
            words = answers.retrieve_message or "no update repository is configured"
            return Problem("NO_REPOSITORY", f"no repository URL or mounted ISO: {words}")
        return None
    error = answers.repository_error
    if error is None or answers.retrieve_status == "SUCCESS":
        return None  # (updates could be retrieved: a repository works, whatever it is)
    if error.kind == "not_found" and answers.retrieve_status == "ERROR":
        return Problem("NO_REPOSITORY", f"repository: {error.message}")
    return _incomplete("repository", error)


def _retrieve_problem(answers: Answers) -> Problem | None:
    status = answers.retrieve_status
    error = answers.retrieve_error
    if error is not None:
        if error.kind in ("server_error", "service_unavailable", "bad_request", "not_found",
                          "forbidden"):
            return Problem("REPOSITORY_UNREACHABLE", f"retrieve-updates: {error.message}")
        return _incomplete("retrieve-updates", error)
    if status is None:
        return None
    if status in ("ERROR", "CANCELLED"):
        words = answers.retrieve_message or f"the task ended {status}"
        return Problem("REPOSITORY_UNREACHABLE", words)
    if status != "SUCCESS":
        why = f": {answers.retrieve_message}" if answers.retrieve_message else ""
        return Problem("CHECK_INCOMPLETE",
                       f"retrieve-updates: its task had not ended ({status}) when the check "
                       f"stopped following it{why}")
    versions = offered_versions(answers.retrieve_result)
    if versions is None:
        return Problem("CHECK_INCOMPLETE",
                       "retrieve-updates: its result lists no update this reader knows "
                       "(expected entries like {\"version\": ...})")
    target = answers.target_version
    if any(same_version(v, target) for v in versions):
        return None
    return Problem("VERSION_NOT_OFFERED", f"{target} is not offered: {_offered_text(versions)}")


def decide(answers: Answers) -> Verdict:
    """The verdict on one appliance (see the module docstring for the rules)."""
    version = answers.version
    if answers.login_error is not None:
        error = answers.login_error
        return _verdict([Problem(_connection_code(error), error.message)], version)
    problems: list[Problem] = []
    if answers.version_error is not None and version is None:
        error = answers.version_error
        code = _connection_code(error)
        if code in ("UNREACHABLE", "TLS", "CREDENTIALS"):
            return _verdict([Problem(code, error.message)], version)
        problems.append(_incomplete("appliance version", error))
    if version is not None and same_version(version, answers.target_version):
        return Verdict(Result.SKIP, "ALREADY_AT_TARGET",
                       f"already at {version}: the install will be skipped", version)
    if answers.services is not None:
        missing = missing_services(answers.verify_services, answers.services)
        if missing:
            problems.append(Problem("SERVICES_DOWN", "not running: " + ", ".join(missing)))
    elif answers.services_error is not None:
        problems.append(_incomplete("services", answers.services_error))
    if answers.reconfigure_required is True:
        problems.append(Problem("RECONFIGURE_PENDING",
                                "reconfigure-required is true: the appliance waits for a "
                                "reconfigure"))
    elif answers.reconfigure_error is not None:
        problems.append(_incomplete("reconfigure-required", answers.reconfigure_error))
    repository = _repository_problem(answers)
    if repository is not None:
        problems.append(repository)
    retrieve = _retrieve_problem(answers)
    if retrieve is not None and not (
            repository is not None and repository.code == "NO_REPOSITORY"
            and retrieve.code == "REPOSITORY_UNREACHABLE"):
        problems.append(retrieve)  # (without a repository, retrieve-updates fails: said)
    if answers.deadline_passed and not any(p.result == Result.FAIL for p in problems):
        problems.append(Problem("CHECK_INCOMPLETE",
                                "the check ran out of time before every question was "
                                "answered"))
    return _verdict(problems, version)


def _verdict(problems: Sequence[Problem], version: str | None) -> Verdict:
    if not problems:
        return Verdict(Result.OK, None, "ready", version)
    fails = [p for p in problems if p.result == Result.FAIL]
    ordered = fails + [p for p in problems if p.result != Result.FAIL]
    first = ordered[0]
    message = first.message
    others = [p.code for p in ordered[1:] if p.code != first.code]
    if others:
        message += "; also " + ", ".join(dict.fromkeys(others))
    return Verdict(first.result, first.code, _short(message), version, tuple(ordered))


def task_error(code: str, message: str) -> tuple[str, str]:
    """The error_code and error_message of a task a `required` pre-flight left out."""
    return f"{TASK_CODE_PREFIX}{code}", _short(f"pre-flight {code}: {message}")


def leaves_out(result: str) -> bool:
    """Whether a `required` pre-flight leaves the appliance out of the plan (SKIPPED)."""
    return result == Result.FAIL


def excluded_from_forecast(result: str) -> bool:
    """Whether the appliance does not count toward the forecast: it will fail (the
    pre-flight found a problem that stops the install) or be skipped (at target)."""
    return result in (Result.FAIL, Result.SKIP)


def summary_line(counts: Mapping[str, int]) -> str:
    """`290 ok, 3 warn, 5 fail, 2 skip` (results with no appliance left out; `none` when
    there is nothing)."""
    parts = [f"{counts.get(str(r), 0)} {r}" for r in (Result.OK, Result.WARN, Result.FAIL,
                                                       Result.SKIP) if counts.get(str(r))]
    return ", ".join(parts) or "none"


__all__ = [
    "CODES",
    "MODES",
    "RESULTS",
    "SEVERITY",
    "TASK_CODE_PREFIX",
    "Answers",
    "CallError",
    "Code",
    "Problem",
    "Result",
    "Verdict",
    "decide",
    "excluded_from_forecast",
    "leaves_out",
    "offered_versions",
    "summary_line",
    "task_error",
]
