"""What an appliance's answers mean for one task: decisions from evidence only.

The runner does the I/O (it sends the install, reads versions, services and task lists)
and asks this module what follows. Nothing here assumes the project's simulator: the rules
hold for any appliance that follows the API, including one that loses answers, restarts
its REST service in the middle of an install, or describes its tasks in free text.

The rules ("no evidence, no conclusion"):

1. Any 2xx answer to the install POST is acceptance, whatever its body holds.
2. An install that may have been sent is never sent again unless there is positive
   evidence that none started: the task list was read and shows no task that is running
   or newer than the send, the version is unchanged, and the appliance answered
   throughout (its REST service did not restart: the session used for the POST is still
   valid). "Could not read the task list" is never "no install".
3. The appliance's "update in progress" refusal after a possibly-sent install means our
   install is running: follow it.
4. "Back on the old version" is concluded only once the old version has been stable, with
   the key services up and no install task running, for a confirmation period
   (`confirmation_period`); until then the task keeps its slot.
5. A 401 from an appliance that may be restarting is part of the outage, not a permanent
   error.
6. An appliance that comes back on a third version (neither the old one nor the target)
   fails with its own error code, `UNEXPECTED_VERSION`.
7. Versions are compared by one function, `same_version`.

SUCCEEDED here means "proven"; when the strategy names health gates (required services, an
HTTP probe, a soak), the task passes them first: `orchestrator/domain/gates.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

# The confirmation period's floor, and how many observed restart times it spans.
CONFIRM_FLOOR_S = 120.0
CONFIRM_RESTARTS = 2.0
# Within the confirmation period, looks whose task list could not be read may separate two
# quiet reads by at most this share of the period (a flaky REST service is not a reboot);
# a longer unread stretch is no evidence, and the period starts over.
QUIET_GAP_SHARE = 0.25
# Appliance clocks are not ours: a task whose start time is within this much before our
# send may still be the install we sent.
CLOCK_SKEW = timedelta(minutes=10)


def same_version(a: str | None, b: str | None) -> bool:
    """Whether two version strings name the same version (surrounding blanks and letter
    case do not matter). The one comparison of versions in the engine."""
    if a is None or b is None:
        return False
    return a.strip().casefold() == b.strip().casefold()


def confirmation_period(reboot_grace: float, observed_restart: float | None) -> float:
    """How long the old version must stay stable (key services up, no install running)
    before "the install did not apply" is concluded: twice the restart time observed on
    this fleet, at least `CONFIRM_FLOOR_S`, and never longer than `reboot_grace` (the
    operator's bound on how long an appliance may take to come back)."""
    wanted = max(CONFIRM_FLOOR_S, CONFIRM_RESTARTS * (observed_restart or 0.0))
    return max(0.0, min(reboot_grace, wanted))


# ---------------------------------------------------------------------- the install POST
class Answer(StrEnum):
    """How one request to the appliance ended."""

    OK = "ok"  # any 2xx, whatever the body
    NOT_SENT = "not_sent"  # the connection failed before the request left this process
    NO_ANSWER = "no_answer"  # sent, and no answer came (reset, timeout)
    UNAUTHORIZED = "unauthorized"  # 401 (after the client's one re-login)
    FORBIDDEN = "forbidden"  # 403
    NOT_FOUND = "not_found"  # 404
    IN_PROGRESS = "in_progress"  # 400 saying an update is being installed already
    BAD_REQUEST = "bad_request"  # any other 4xx
    UNAVAILABLE = "unavailable"  # 503
    SERVER_ERROR = "server_error"  # another 5xx, or an answer we could not read


class PostAction(StrEnum):
    """What follows an answer to the install POST."""

    FOLLOW = "follow"  # accepted (or ours is running): follow the install
    INVESTIGATE = "investigate"  # may have started: gather evidence, do not send again
    RETRY_LATER = "retry_later"  # certainly did not start: may be sent again later
    FAIL = "fail"  # refused for good; nothing was installed


def after_install_post(answer: Answer, *, sent_before: bool) -> PostAction:
    """The next step after the install POST answered `answer`.

    `sent_before`: an earlier POST of this task may have started an install (its answer
    was lost, the process died after sending it, or an earlier attempt sent one)."""
    if answer is Answer.OK:
        return PostAction.FOLLOW
    if answer is Answer.NOT_SENT:
        return PostAction.INVESTIGATE if sent_before else PostAction.RETRY_LATER
    if answer is Answer.IN_PROGRESS:
        # ours (rule 3), or somebody else's install: then wait for it to end
        return PostAction.FOLLOW if sent_before else PostAction.RETRY_LATER
    if answer in (Answer.NO_ANSWER, Answer.UNAVAILABLE, Answer.SERVER_ERROR):
        return PostAction.INVESTIGATE  # the appliance may have started it before failing
    # 401 / 403 / 404 / other 4xx: a refusal; after a possibly-sent install it may come
    # from an appliance in the middle of a restart (rule 5)
    return PostAction.INVESTIGATE if sent_before else PostAction.FAIL


# ---------------------------------------------------------------------- a lost answer
@dataclass(frozen=True)
class Listing:
    """A task list that was read successfully (`GET /tasks`)."""

    running_ids: tuple[str | None, ...] = ()  # tasks QUEUED or RUNNING (or of unknown status)
    newer_ids: tuple[str | None, ...] = ()  # other tasks started after (or near) the send

    @property
    def quiet(self) -> bool:
        return not self.running_ids and not self.newer_ids

    def candidate(self) -> str | None:
        """The task to follow as our install: a running one, else a newer one."""
        for task_id in (*self.running_ids, *self.newer_ids):
            if task_id:
                return task_id
        return None


def listing_of(
    tasks: list[tuple[str | None, str, datetime | None]], sent_at: datetime
) -> Listing:
    """Build a `Listing` from (id, status, start time) of the listed tasks; `status` is the
    task status as a string (QUEUED, RUNNING, SUCCESS, ERROR, CANCELLED, or anything else,
    which counts as running). A task with no start time counts as newer than the send."""
    running: list[str | None] = []
    newer: list[str | None] = []
    for task_id, status, started in tasks:
        if status.upper() not in ("SUCCESS", "ERROR", "CANCELLED"):
            running.append(task_id)
        elif started is None or started >= sent_at - CLOCK_SKEW:
            newer.append(task_id)
    return Listing(tuple(running), tuple(newer))


class LostAction(StrEnum):
    RESEND = "resend"  # positive evidence that no install started: it may be sent again
    ADOPT = "adopt"  # a task that may be ours runs: follow it by its id
    FOLLOW = "follow"  # no task to follow: follow the appliance's version
    LOOK_AGAIN = "look_again"  # no evidence either way yet


@dataclass(frozen=True)
class LostVerdict:
    action: LostAction
    task_id: str | None = None
    reason: str = ""


def after_lost_answer(
    *,
    target: str,
    from_version: str | None,
    version: str | None,
    listing: Listing | None,
    answered_throughout: bool,
) -> LostVerdict:
    """An install POST may have started an install (rule 2). `version`: what `GET
    /appliance` reports now (None: it did not answer); `listing`: the task list (None: it
    could not be read); `answered_throughout`: every request since the send was answered
    and the session of the POST is still valid (the REST service did not restart)."""
    if version is not None and same_version(version, target):
        return LostVerdict(LostAction.FOLLOW, reason="the appliance reports the target version")
    if listing is None:
        return LostVerdict(LostAction.LOOK_AGAIN, reason="the task list could not be read")
    candidate = listing.candidate()
    if listing.running_ids:
        running = next((i for i in listing.running_ids if i), None)
        if running is not None:
            return LostVerdict(LostAction.ADOPT, running, "a task is running on the appliance")
        # never a finished task in place of the running one that has no id
        return LostVerdict(LostAction.FOLLOW, reason="a task without an id is running")
    if version is None:
        return LostVerdict(LostAction.LOOK_AGAIN, reason="the version could not be read")
    if not listing.quiet:
        return LostVerdict(LostAction.FOLLOW, candidate,
                           "a task started since the install was sent")
    if from_version is None or not same_version(version, from_version):
        return LostVerdict(LostAction.FOLLOW, reason=f"the version changed to {version}")
    if not answered_throughout:
        return LostVerdict(LostAction.FOLLOW,
                           reason="the appliance did not answer throughout (it may have "
                                  "restarted and forgotten its tasks)")
    return LostVerdict(LostAction.RESEND,
                       reason="no task since the send, the version unchanged, and the "
                              "appliance answered throughout")


# ---------------------------------------------------------------------- following an install
class Outcome(StrEnum):
    WAIT = "wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    error_code: str | None = None
    message: str | None = None
    final_version: str | None = None


WAIT = Verdict(Outcome.WAIT)


@dataclass(frozen=True)
class Watch:
    """What has been observed of one appliance since its install may have been sent.

    Built with `start_watch`, advanced with the `saw_*` functions (each returns a new
    Watch), judged with `judge`. Times are seconds on any monotonic clock."""

    target: str
    from_version: str | None
    accepted: bool  # the appliance acknowledged an install (2xx, a task followed, in progress)
    reboot_grace: float
    confirm: float  # the confirmation period (see `confirmation_period`)
    last_version: str | None = None
    services_up: bool = False
    down_since: float | None = None  # first failed look of the current outage
    outage_seen: bool = False
    target_since: float | None = None  # on the target version (services maybe not all up)
    old_since: float | None = None  # on the old version with the key services up
    quiet_at: float | None = None  # last task list (since old_since) showing nothing running
    listed: bool = False  # the task list was read quiet at the latest look
    third_version: str | None = None
    task_error: str | None = None  # the followed install task ended in ERROR


def start_watch(
    *, target: str, from_version: str | None, accepted: bool, reboot_grace: float,
    confirm: float, outage_seen: bool = False,
) -> Watch:
    """`outage_seen`: the appliance was already seen restarting (e.g. its install task
    vanished) before this watch began."""
    return Watch(target=target, from_version=from_version, accepted=accepted,
                 reboot_grace=reboot_grace, confirm=confirm, outage_seen=outage_seen)


def saw_version(w: Watch, now: float, version: str, services_up: bool) -> Watch:
    """`GET /appliance` answered `version`; `services_up`: the key services run."""
    w = replace(w, last_version=version, services_up=services_up, down_since=None)
    if same_version(version, w.target):
        return replace(w, target_since=w.target_since if w.target_since is not None else now,
                       old_since=None, quiet_at=None, third_version=None)
    w = replace(w, target_since=None)
    if w.from_version is not None and not same_version(version, w.from_version):
        return replace(w, third_version=version if services_up else None, old_since=None,
                       quiet_at=None)
    # the old version (or no old version known: anything but the target counts as old)
    if not services_up:
        return replace(w, old_since=None, quiet_at=None, third_version=None, listed=False)
    if w.old_since is not None and not w.listed and (
        w.quiet_at is None or now - w.quiet_at > QUIET_GAP_SHARE * w.confirm
    ):
        # the previous look read no quiet task list, and none was read for too long: that
        # stretch is not evidence of "no install running" (rule 2): the clock starts again
        return replace(w, old_since=now, quiet_at=None, third_version=None, listed=False)
    return replace(w, old_since=w.old_since if w.old_since is not None else now,
                   third_version=None, listed=False)


def saw_no_answer(w: Watch, now: float, *, restart_sign: bool) -> Watch:
    """A look got no usable answer. `restart_sign`: a sign that the appliance (or its REST
    service) is restarting: connection refused or reset, a session it forgot (401), 503.
    Such a sign starts the stability of the old version over; a passing 5xx does not."""
    w = replace(w, down_since=w.down_since if w.down_since is not None else now)
    if restart_sign:
        w = replace(w, outage_seen=True, old_since=None, quiet_at=None, target_since=None,
                    third_version=None)
    return w


def saw_tasks(w: Watch, now: float, *, running: bool) -> Watch:
    """A task list (or the followed task) was read: `running` whether any task runs. A
    list that could not be read is not a call to this function (rule 2)."""
    if running:
        return replace(w, old_since=None, quiet_at=None, accepted=True, listed=False)
    if w.old_since is not None:
        return replace(w, quiet_at=now, listed=True)
    return w


def saw_task_error(w: Watch, message: str) -> Watch:
    """The install task we follow (by its id) ended in ERROR."""
    return replace(w, task_error=message, accepted=True)


def judge(w: Watch, now: float) -> Verdict:
    """The outcome proven so far, or WAIT."""
    if w.target_since is not None and w.last_version is not None and \
            same_version(w.last_version, w.target) and w.down_since is None:
        if w.services_up:
            return Verdict(Outcome.SUCCEEDED, final_version=w.last_version)
        if now - w.target_since > w.reboot_grace:
            return Verdict(Outcome.FAILED, "SERVICES_DOWN",
                           f"{w.target} is installed but the key services are not running "
                           f"{w.reboot_grace:g} s later", final_version=w.last_version)
        return WAIT
    if w.task_error is not None:
        return Verdict(Outcome.FAILED, "INSTALL_ERROR", w.task_error,
                       final_version=w.last_version)
    if w.third_version is not None and w.down_since is None:
        return Verdict(Outcome.FAILED, "UNEXPECTED_VERSION",
                       f"the appliance came back on {w.third_version}: neither the version "
                       f"it had ({w.from_version}) nor the target {w.target}",
                       final_version=w.third_version)
    if w.down_since is not None and now - w.down_since > w.reboot_grace:
        return Verdict(Outcome.TIMED_OUT, "UNREACHABLE",
                       f"the appliance did not answer for more than reboot_grace "
                       f"{w.reboot_grace:g} s")
    if (w.old_since is not None and w.quiet_at is not None and w.listed
            and w.down_since is None and now - w.old_since >= w.confirm):
        old = w.last_version
        if w.accepted:
            where = f"came back on {old}, not {w.target}," if w.outage_seen else \
                f"stayed on {old}, not {w.target},"
            return Verdict(Outcome.FAILED, "VERSION_MISMATCH",
                           f"the appliance {where} with its key services up and no install "
                           f"running for {w.confirm:g} s: the install did not apply",
                           final_version=old)
        return Verdict(Outcome.FAILED, "INSTALL_UNCONFIRMED",
                       f"the answer to the install was lost and the appliance stayed on {old} "
                       f"with no install running for {w.confirm:g} s: the install may never "
                       f"have started (retry-failed sends it again)", final_version=old)
    return WAIT


# ---------------------------------------------------------------------- a held slot
def slot_free(*, version: str | None, listing_read: bool, install_running: bool,
              services_up: bool) -> bool:
    """A task that timed out after its install was sent keeps its slot (it counts as in
    flight for every limit) until its appliance is seen idle: it answered with a version,
    its key services are up, and its task list was read with no task running. An
    unanswered request or an unread list is no evidence (the appliance may still be
    rebooting), and neither is the version alone (the install may still be about to reboot
    it, or its services may still be starting)."""
    return version is not None and listing_read and not install_running and services_up
