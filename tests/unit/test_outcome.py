"""What the runner concludes from an appliance's answers (orchestrator.domain.outcome).

One section per rule of the module's docstring: the install POST (rules 1, 3, 5), a lost
answer (rule 2), the confirmation period and the Watch (rules 4, 6), `same_version` (rule
7), and a property that runs the Watch against random appliance behaviour models.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from orchestrator.domain.outcome import (
    CLOCK_SKEW,
    CONFIRM_FLOOR_S,
    Answer,
    Listing,
    LostAction,
    LostVerdict,
    Outcome,
    PostAction,
    Verdict,
    Watch,
    after_install_post,
    after_lost_answer,
    confirmation_period,
    judge,
    listing_of,
    same_version,
    saw_no_answer,
    saw_task_error,
    saw_tasks,
    saw_version,
    slot_free,
    start_watch,
)

TARGET = "5.2.0-LTS"
OLD = "5.1.3-LTS"
THIRD = "5.1.4-hotfix"
SENT_AT = datetime(2026, 5, 4, 12, tzinfo=UTC)
# derandomize: the same examples on every run, so that CI never meets a new one by chance
# (a failure found while exploring with a random seed becomes an @example)
BOUNDED = settings(max_examples=200, deadline=None, derandomize=True)


def spellings(version: str) -> list[str]:
    """How an appliance may spell a version: letter case and surrounding blanks vary."""
    return [version, version.lower(), f" {version.upper()}", f"{version}\n", f"\t{version} "]


# --- rules 1, 3, 5: the answer to the install POST ------------------------------------------

FIRST, RESENT = False, True  # sent_before: no earlier POST / an earlier one may have started

POST_TABLE: list[tuple[Answer, bool, PostAction]] = [
    # rule 1: any 2xx is acceptance
    (Answer.OK, FIRST, PostAction.FOLLOW),
    (Answer.OK, RESENT, PostAction.FOLLOW),
    # never left this process: safe to send again, unless an earlier POST may have started
    (Answer.NOT_SENT, FIRST, PostAction.RETRY_LATER),
    (Answer.NOT_SENT, RESENT, PostAction.INVESTIGATE),
    # sent, and the appliance may have started it before failing
    (Answer.NO_ANSWER, FIRST, PostAction.INVESTIGATE),
    (Answer.NO_ANSWER, RESENT, PostAction.INVESTIGATE),
    (Answer.UNAVAILABLE, FIRST, PostAction.INVESTIGATE),
    (Answer.UNAVAILABLE, RESENT, PostAction.INVESTIGATE),
    (Answer.SERVER_ERROR, FIRST, PostAction.INVESTIGATE),
    (Answer.SERVER_ERROR, RESENT, PostAction.INVESTIGATE),
    # rule 3: "in progress" after a possibly-sent install is ours; else somebody else's
    (Answer.IN_PROGRESS, FIRST, PostAction.RETRY_LATER),
    (Answer.IN_PROGRESS, RESENT, PostAction.FOLLOW),
    # refusals are final the first time; rule 5: part of a restart after a possible send
    (Answer.UNAUTHORIZED, FIRST, PostAction.FAIL),
    (Answer.UNAUTHORIZED, RESENT, PostAction.INVESTIGATE),
    (Answer.FORBIDDEN, FIRST, PostAction.FAIL),
    (Answer.FORBIDDEN, RESENT, PostAction.INVESTIGATE),
    (Answer.NOT_FOUND, FIRST, PostAction.FAIL),
    (Answer.NOT_FOUND, RESENT, PostAction.INVESTIGATE),
    (Answer.BAD_REQUEST, FIRST, PostAction.FAIL),
    (Answer.BAD_REQUEST, RESENT, PostAction.INVESTIGATE),
]


@pytest.mark.parametrize(
    ("answer", "sent_before", "expected"), POST_TABLE,
    ids=[f"{a.value}-{'resent' if s else 'first'}" for a, s, _ in POST_TABLE],
)
def test_after_install_post(answer: Answer, sent_before: bool, expected: PostAction) -> None:
    """Each answer to the install POST leads to exactly the documented next step."""
    assert after_install_post(answer, sent_before=sent_before) is expected


def test_post_table_covers_every_answer_once() -> None:
    """A new kind of answer cannot slip in without a decided next step in the table."""
    pairs = [(answer, sent) for answer, sent, _ in POST_TABLE]
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == set(itertools.product(Answer, (FIRST, RESENT)))


# --- rule 2: a lost answer ------------------------------------------------------------------


QUIET_LIST = Listing()


@dataclass(frozen=True)
class Evidence:
    """What the runner gathered after an install POST whose answer was lost."""

    from_version: str | None = OLD
    version: str | None = OLD
    listing: Listing | None = QUIET_LIST
    answered_throughout: bool = True
    target: str = TARGET

    def verdict(self) -> LostVerdict:
        return after_lost_answer(target=self.target, from_version=self.from_version,
                                 version=self.version, listing=self.listing,
                                 answered_throughout=self.answered_throughout)


ALL_EVIDENCE = Evidence()

LOST_TABLE: list[tuple[str, Evidence, LostAction, str | None]] = [
    ("all-evidence", ALL_EVIDENCE, LostAction.RESEND, None),
    ("all-evidence-other-spelling", replace(ALL_EVIDENCE, version=f" {OLD.lower()} "),
     LostAction.RESEND, None),
    # every single missing piece of evidence prevents the resend
    ("list-unreadable", replace(ALL_EVIDENCE, listing=None), LostAction.LOOK_AGAIN, None),
    ("task-running", replace(ALL_EVIDENCE, listing=Listing(running_ids=("t-7",))),
     LostAction.ADOPT, "t-7"),
    ("task-without-id-running", replace(ALL_EVIDENCE, listing=Listing(running_ids=(None,))),
     LostAction.FOLLOW, None),
    ("task-with-empty-id-running", replace(ALL_EVIDENCE, listing=Listing(running_ids=("",))),
     LostAction.FOLLOW, None),
    ("finished-task-since-send", replace(ALL_EVIDENCE, listing=Listing(newer_ids=("t-8",))),
     LostAction.FOLLOW, "t-8"),
    ("finished-task-without-id", replace(ALL_EVIDENCE, listing=Listing(newer_ids=(None,))),
     LostAction.FOLLOW, None),
    ("version-unread", replace(ALL_EVIDENCE, version=None), LostAction.LOOK_AGAIN, None),
    ("version-changed", replace(ALL_EVIDENCE, version=THIRD), LostAction.FOLLOW, None),
    ("old-version-unknown", replace(ALL_EVIDENCE, from_version=None), LostAction.FOLLOW, None),
    ("restarted-meanwhile", replace(ALL_EVIDENCE, answered_throughout=False),
     LostAction.FOLLOW, None),
    # the target version: the install ran, whatever else is known
    ("on-target", replace(ALL_EVIDENCE, version=TARGET), LostAction.FOLLOW, None),
    ("on-target-list-unreadable", replace(ALL_EVIDENCE, version=f"{TARGET.lower()} ",
                                          listing=None), LostAction.FOLLOW, None),
    ("on-target-task-running", replace(ALL_EVIDENCE, version=TARGET,
                                       listing=Listing(running_ids=("t-7",))),
     LostAction.FOLLOW, None),
    # a running task is followed even when the version could not be read
    ("task-running-version-unread", replace(ALL_EVIDENCE, version=None,
                                            listing=Listing(running_ids=("t-7",))),
     LostAction.ADOPT, "t-7"),
    ("first-running-id-adopted", replace(ALL_EVIDENCE, listing=Listing(
        running_ids=(None, "t-3", "t-4"), newer_ids=("t-9",))), LostAction.ADOPT, "t-3"),
    ("list-unreadable-and-restarted", replace(ALL_EVIDENCE, listing=None,
                                              answered_throughout=False),
     LostAction.LOOK_AGAIN, None),
]


@pytest.mark.parametrize(("evidence", "action", "task_id"),
                         [row[1:] for row in LOST_TABLE], ids=[row[0] for row in LOST_TABLE])
def test_after_lost_answer(evidence: Evidence, action: LostAction, task_id: str | None) -> None:
    """The install is sent again only on positive evidence that none started."""
    verdict = evidence.verdict()
    assert verdict.action is action
    assert verdict.task_id == task_id
    assert verdict.reason  # the runner logs why


def test_opaque_task_ids_and_statuses_are_followed_verbatim() -> None:
    """Free-text task ids and statuses are never interpreted: an unknown status is a
    running task, and its id, whatever it says, is the one adopted."""
    odd_id = "install 5.2.0-LTS: FAILED (nothing to do)"
    listing = listing_of([(odd_id, "Applying update, step 3/5", SENT_AT - timedelta(days=3))],
                         SENT_AT)
    verdict = replace(ALL_EVIDENCE, listing=listing).verdict()
    assert verdict.action is LostAction.ADOPT
    assert verdict.task_id == odd_id


IDS = st.one_of(st.none(), st.sampled_from(["", "t-1", "t-2"]))
VERSIONS = st.one_of(st.none(), st.sampled_from(spellings(OLD) + spellings(TARGET)
                                                 + spellings(THIRD)))
LISTINGS = st.builds(Listing, running_ids=st.lists(IDS, max_size=2).map(tuple),
                     newer_ids=st.lists(IDS, max_size=2).map(tuple))
EVIDENCE = st.builds(Evidence, from_version=VERSIONS, version=VERSIONS,
                     listing=st.one_of(st.none(), LISTINGS), answered_throughout=st.booleans())


@BOUNDED
@given(EVIDENCE)
def test_resend_exactly_when_all_evidence_holds(evidence: Evidence) -> None:
    """For any mix of evidence: RESEND implies the list was read and quiet, the version
    read and unchanged, and the appliance answered throughout; and with all of that, the
    install is sent again (the task is not stuck)."""
    verdict = evidence.verdict()
    listing = evidence.listing
    proven = (listing is not None and listing.quiet and evidence.version is not None
              and same_version(evidence.version, evidence.from_version)
              and not same_version(evidence.version, TARGET)
              and evidence.answered_throughout)
    assert (verdict.action is LostAction.RESEND) == proven
    if listing is None:
        assert verdict.action is not LostAction.RESEND  # "could not read" is never "none"
    if same_version(evidence.version, TARGET):
        assert verdict.action is LostAction.FOLLOW
    if verdict.action is LostAction.LOOK_AGAIN:
        assert listing is None or evidence.version is None
    if verdict.action is LostAction.ADOPT:
        assert listing is not None and listing.running_ids
        assert verdict.task_id
        assert verdict.task_id in (*listing.running_ids, *listing.newer_ids)
    running_with_id = [i for i in listing.running_ids if i] if listing is not None else []
    if running_with_id and not same_version(evidence.version, TARGET):
        assert (verdict.action, verdict.task_id) == (LostAction.ADOPT, running_with_id[0])


LISTING_TABLE: list[tuple[str, str, datetime | None, str]] = [
    # (id, status, start time, where the task lands: running / newer / ignored)
    ("running", "RUNNING", SENT_AT - timedelta(days=1), "running"),
    ("queued-lower-case", "queued", None, "running"),
    ("running-mixed-case", "Running", SENT_AT + timedelta(minutes=1), "running"),
    ("unknown-status", "UNKNOWN", SENT_AT - timedelta(days=1), "running"),
    ("free-text-status", "Applying firmware", SENT_AT - timedelta(days=1), "running"),
    ("success-after-send", "SUCCESS", SENT_AT + timedelta(seconds=5), "newer"),
    ("error-no-start-time", "error", None, "newer"),
    ("cancelled-at-skew-edge", "Cancelled", SENT_AT - CLOCK_SKEW, "newer"),
    ("success-within-skew", "success", SENT_AT - CLOCK_SKEW + timedelta(seconds=1), "newer"),
    ("success-before-skew", "SUCCESS", SENT_AT - CLOCK_SKEW - timedelta(seconds=1), "ignored"),
    ("error-long-ago", "ERROR", SENT_AT - timedelta(days=2), "ignored"),
    ("cancelled-long-ago", "cancelled", SENT_AT - timedelta(hours=1), "ignored"),
]


@pytest.mark.parametrize(("status", "started", "where"), [row[1:] for row in LISTING_TABLE],
                         ids=[row[0] for row in LISTING_TABLE])
def test_listing_of(status: str, started: datetime | None, where: str) -> None:
    """Unfinished tasks (any status but SUCCESS/ERROR/CANCELLED, in any case) run; finished
    ones count as newer when they have no start time or started within CLOCK_SKEW of the
    send."""
    listing = listing_of([("t-1", status, started)], SENT_AT)
    expected = {"running": Listing(running_ids=("t-1",)), "newer": Listing(newer_ids=("t-1",)),
                "ignored": Listing()}[where]
    assert listing == expected
    assert listing.quiet == (where == "ignored")


def test_listing_keeps_order_and_candidate_prefers_running_tasks() -> None:
    """The task followed is the first running one with an id, else the first newer one."""
    listing = listing_of([
        ("done", "SUCCESS", SENT_AT),
        (None, "RUNNING", None),
        ("r-1", "QUEUED", SENT_AT - timedelta(days=1)),
        ("old", "ERROR", SENT_AT - timedelta(days=1)),
        ("r-2", "RUNNING", SENT_AT),
    ], SENT_AT)
    assert listing == Listing(running_ids=(None, "r-1", "r-2"), newer_ids=("done",))
    assert listing.candidate() == "r-1"
    assert Listing(running_ids=(None, ""), newer_ids=(None, "n-1")).candidate() == "n-1"
    assert Listing(running_ids=(None,), newer_ids=("",)).candidate() is None
    assert listing_of([], SENT_AT) == Listing()
    assert Listing().quiet


# --- rule 4: the confirmation period ---------------------------------------------------------

CONFIRM_TABLE: list[tuple[str, float, float | None, float]] = [
    ("floor-without-observation", 600, None, CONFIRM_FLOOR_S),
    ("floor-for-fast-restarts", 600, 30, CONFIRM_FLOOR_S),
    ("floor-for-zero-restart", 600, 0, CONFIRM_FLOOR_S),
    ("twice-the-restart", 600, 100, 200),
    ("twice-the-restart-just-above-floor", 600, 61, 122),
    ("capped-by-reboot-grace", 600, 400, 600),
    ("exactly-reboot-grace", 600, 300, 600),
    ("grace-below-floor", 90, None, 90),
    ("grace-below-floor-with-observation", 90, 200, 90),
    ("zero-grace", 0, 100, 0),
    ("negative-grace-is-zero", -5, None, 0),
]


@pytest.mark.parametrize(("grace", "observed", "expected"), [row[1:] for row in CONFIRM_TABLE],
                         ids=[row[0] for row in CONFIRM_TABLE])
def test_confirmation_period(grace: float, observed: float | None, expected: float) -> None:
    """Twice the observed restart, at least the floor, never more than reboot_grace."""
    assert confirmation_period(grace, observed) == pytest.approx(expected)


@BOUNDED
@given(st.floats(0, 5000), st.one_of(st.none(), st.floats(0, 5000)), st.floats(0, 5000))
def test_confirmation_period_bounds(grace: float, observed: float | None, more: float) -> None:
    """Within [0, reboot_grace], spans the floor and two restarts where grace allows, and
    never shrinks when restarts are seen to take longer."""
    period = confirmation_period(grace, observed)
    assert 0 <= period <= grace
    assert period >= min(grace, CONFIRM_FLOOR_S)
    assert period >= min(grace, 2 * (observed or 0))
    assert confirmation_period(grace, (observed or 0) + more) >= period


# --- rules 4 and 6: the Watch ----------------------------------------------------------------

GRACE = 300.0
CONFIRM = 120.0


@dataclass(frozen=True)
class Look:
    """One look of the runner: an answer (version, services) and what it learnt of the
    tasks, or no answer (with or without a sign of a restart)."""

    at: float
    version: str | None = None  # None: no usable answer
    up: bool = True
    restart_sign: bool = True  # for no answer
    running: bool | None = None  # the task list: None when it was not read
    error: str | None = None  # the followed install task ended in ERROR


def seen(at: float, version: str, *, up: bool = True, running: bool | None = False,
         error: str | None = None) -> Look:
    return Look(at, version, up=up, running=running, error=error)


def lost(at: float, *, restart_sign: bool = True) -> Look:
    return Look(at, restart_sign=restart_sign)


def observe(w: Watch, look: Look) -> Watch:
    """Feed one look to the Watch, as the runner does."""
    if look.version is None:
        return saw_no_answer(w, look.at, restart_sign=look.restart_sign)
    w = saw_version(w, look.at, look.version, look.up)
    if look.error is not None:
        return saw_task_error(w, look.error)
    if look.running is not None:
        return saw_tasks(w, look.at, running=look.running)
    return w


def watch(*, accepted: bool = True, from_version: str | None = OLD,
          outage_seen: bool = False) -> Watch:
    return start_watch(target=TARGET, from_version=from_version, accepted=accepted,
                       reboot_grace=GRACE, confirm=CONFIRM, outage_seen=outage_seen)


@dataclass(frozen=True)
class Scenario:
    looks: tuple[Look, ...]
    outcome: Outcome
    error_code: str | None = None
    final_version: str | None = None
    accepted: bool = True
    from_version: str | None = OLD
    judge_at: float | None = None  # judge later than the last look


def old_quiet(*times: float) -> tuple[Look, ...]:
    """The old version with services up and a quiet task list at each of `times`."""
    return tuple(seen(t, OLD) for t in times)


SCENARIOS: dict[str, Scenario] = {
    "target-services-up": Scenario(
        (seen(0, TARGET, running=None),), Outcome.SUCCEEDED, final_version=TARGET),
    "target-other-spelling": Scenario(
        (seen(0, f" {TARGET.lower()}\n", running=None),), Outcome.SUCCEEDED,
        final_version=f" {TARGET.lower()}\n"),
    "target-services-come-up": Scenario(
        (seen(0, TARGET, up=False, running=None), seen(250, TARGET, up=False, running=None),
         seen(299, TARGET, running=None)), Outcome.SUCCEEDED, final_version=TARGET),
    "target-services-down-for-grace": Scenario(
        (seen(0, TARGET, up=False, running=None), seen(300, TARGET, up=False, running=None)),
        Outcome.WAIT),
    "target-services-down-beyond-grace": Scenario(
        (seen(0, TARGET, up=False, running=None), seen(301, TARGET, up=False, running=None)),
        Outcome.FAILED, "SERVICES_DOWN", TARGET),
    "target-services-down-clock-restarts-after-restart": Scenario(
        (seen(0, TARGET, up=False, running=None), lost(200),
         seen(250, TARGET, up=False, running=None), seen(400, TARGET, up=False, running=None)),
        Outcome.WAIT),
    "old-stable-for-confirm-accepted": Scenario(
        old_quiet(0, 60, 120), Outcome.FAILED, "VERSION_MISMATCH", OLD),
    "old-stable-for-confirm-not-accepted": Scenario(
        old_quiet(0, 60, 120), Outcome.FAILED, "INSTALL_UNCONFIRMED", OLD, accepted=False),
    "old-stable-other-spelling": Scenario(
        (seen(0, OLD.lower()), seen(120, f" {OLD} ")), Outcome.FAILED, "VERSION_MISMATCH",
        f" {OLD} "),
    "old-stable-less-than-confirm": Scenario(old_quiet(0, 60, 119), Outcome.WAIT),
    "old-task-list-never-read": Scenario(
        (seen(0, OLD, running=None), seen(500, OLD, running=None),
         seen(5000, OLD, running=None)), Outcome.WAIT, judge_at=100_000),
    "old-install-task-running": Scenario(
        (seen(0, OLD, running=True), seen(500, OLD, running=True),
         seen(5000, OLD, running=True)), Outcome.WAIT, judge_at=100_000),
    "old-stability-starts-when-install-stops": Scenario(
        (seen(0, OLD, running=True), seen(10, OLD), seen(129, OLD)), Outcome.WAIT),
    "old-stable-after-install-stops": Scenario(
        (seen(0, OLD, running=True), seen(10, OLD), seen(130, OLD)),
        Outcome.FAILED, "VERSION_MISMATCH", OLD),
    "running-task-counts-as-acknowledged": Scenario(
        (seen(0, OLD, running=True), seen(10, OLD), seen(130, OLD)),
        Outcome.FAILED, "VERSION_MISMATCH", OLD, accepted=False),
    "old-services-down-restarts-stability": Scenario(
        (seen(0, OLD), seen(60, OLD, up=False, running=None), seen(100, OLD),
         seen(200, OLD)), Outcome.WAIT),
    "restart-sign-restarts-stability": Scenario(
        (*old_quiet(0, 50), lost(60), *old_quiet(100, 150)), Outcome.WAIT),
    "restart-sign-then-stable-for-confirm": Scenario(
        (*old_quiet(0, 50), lost(60), *old_quiet(100, 220)),
        Outcome.FAILED, "VERSION_MISMATCH", OLD),
    "no-verdict-while-unanswered": Scenario(
        (*old_quiet(0, 50), lost(130, restart_sign=False)), Outcome.WAIT),
    "passing-error-keeps-stability": Scenario(
        (*old_quiet(0, 50), lost(60, restart_sign=False), seen(120, OLD)),
        Outcome.FAILED, "VERSION_MISMATCH", OLD),
    "unanswered-for-grace": Scenario((lost(0), lost(150), lost(300)), Outcome.WAIT),
    "unanswered-beyond-grace": Scenario(
        (lost(0), lost(150), lost(301)), Outcome.TIMED_OUT, "UNREACHABLE"),
    "passing-errors-beyond-grace": Scenario(
        (lost(0, restart_sign=False), lost(301, restart_sign=False)),
        Outcome.TIMED_OUT, "UNREACHABLE"),
    "answer-ends-the-outage": Scenario(
        (lost(0), seen(200, OLD, up=False, running=None), lost(250), lost(500)), Outcome.WAIT),
    "third-version-services-up": Scenario(
        (lost(0), seen(60, THIRD)), Outcome.FAILED, "UNEXPECTED_VERSION", THIRD),
    "third-version-services-down-waits": Scenario(
        (lost(0), seen(60, THIRD, up=False, running=None),
         seen(200, THIRD, up=False, running=None)), Outcome.WAIT),
    "third-version-services-come-up": Scenario(
        (seen(60, THIRD, up=False, running=None), seen(90, THIRD)),
        Outcome.FAILED, "UNEXPECTED_VERSION", THIRD),
    "third-version-services-down-then-target": Scenario(
        (seen(60, THIRD, up=False, running=None), seen(90, TARGET, running=None)),
        Outcome.SUCCEEDED, final_version=TARGET),
    "unknown-old-version-anything-else-is-old": Scenario(
        (seen(0, THIRD), seen(120, THIRD)), Outcome.FAILED, "VERSION_MISMATCH", THIRD,
        from_version=None),
    "install-task-error": Scenario(
        (seen(0, OLD, running=True), seen(30, OLD, error="disk full")),
        Outcome.FAILED, "INSTALL_ERROR", OLD),
    "rest-restart-in-the-middle": Scenario(
        (*old_quiet(0, 30, 60, 90), lost(100), lost(110, restart_sign=False), lost(130),
         seen(140, OLD, up=False, running=None), *old_quiet(150, 200), lost(230),
         seen(260, TARGET, up=False, running=None), seen(290, TARGET, running=None)),
        Outcome.SUCCEEDED, final_version=TARGET),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_watch_scenario(scenario: Scenario) -> None:
    """Every look but the last leaves the task waiting (the runner would stop at a final
    verdict); the last proves the expected outcome."""
    w = watch(accepted=scenario.accepted, from_version=scenario.from_version)
    for look in scenario.looks[:-1]:
        w = observe(w, look)
        assert judge(w, look.at) == Verdict(Outcome.WAIT), look
    last = scenario.looks[-1]
    w = observe(w, last)
    verdict = judge(w, last.at if scenario.judge_at is None else scenario.judge_at)
    assert (verdict.outcome, verdict.error_code, verdict.final_version) == (
        scenario.outcome, scenario.error_code, scenario.final_version)
    if verdict.outcome is not Outcome.SUCCEEDED and verdict.outcome is not Outcome.WAIT:
        assert verdict.message  # a failed task tells the operator why


def test_mismatch_message_tells_whether_the_appliance_restarted() -> None:
    """The operator reads "came back on" after a restart, "stayed on" without one."""
    looks = old_quiet(0, 120)
    stayed = judge(observe(observe(watch(), looks[0]), looks[1]), 120)
    came_back = judge(observe(observe(watch(outage_seen=True), looks[0]), looks[1]), 120)
    assert stayed.message is not None and f"stayed on {OLD}" in stayed.message
    assert came_back.message is not None and f"came back on {OLD}" in came_back.message
    restarted = watch()
    for look in (lost(0), *old_quiet(10, 130)):
        restarted = observe(restarted, look)
    message = judge(restarted, 130).message
    assert message is not None and "came back on" in message


def test_task_error_message_is_kept() -> None:
    """The install task's own error message reaches the operator."""
    w = observe(watch(accepted=False), seen(0, OLD, error="checksum mismatch in image"))
    assert judge(w, 0) == Verdict(Outcome.FAILED, "INSTALL_ERROR", "checksum mismatch in image",
                                  final_version=OLD)


def test_unreadable_task_list_after_one_quiet_read_is_no_evidence() -> None:
    """The list was quiet at 0 s, then could not be read while an install ran: at 120 s
    the task should still wait, not fail as VERSION_MISMATCH."""
    w = watch()
    for look in (seen(0, OLD), seen(60, OLD, running=None), seen(120, OLD, running=None)):
        w = observe(w, look)
    assert judge(w, 120).outcome is Outcome.WAIT


# --- rule 7: same_version --------------------------------------------------------------------

SAME_TABLE: list[tuple[str, str | None, str | None, bool]] = [
    ("identical", "5.2.0", "5.2.0", True),
    ("letter-case", "5.2.0-LTS", "5.2.0-lts", True),
    ("surrounding-blanks", "  5.2.0\t", "5.2.0", True),
    ("blanks-and-case", "\n5.2.0-RC1 ", " 5.2.0-rc1", True),
    ("different", "5.2.0", "5.2.1", False),
    ("prefix-is-not-same", "5.2", "5.2.0", False),
    ("inner-blank-matters", "5.2 .0", "5.2.0", False),
    ("none-left", None, "5.2.0", False),
    ("none-right", "5.2.0", None, False),
    ("none-both", None, None, False),
]


@pytest.mark.parametrize(("a", "b", "expected"), [row[1:] for row in SAME_TABLE],
                         ids=[row[0] for row in SAME_TABLE])
def test_same_version(a: str | None, b: str | None, expected: bool) -> None:
    """Case and surrounding blanks do not matter; an unknown version equals nothing."""
    assert same_version(a, b) is expected
    assert same_version(b, a) is expected


ASCII_VERSIONS = st.text(alphabet="0123456789.-abcXYZ", min_size=1, max_size=8)
BLANKS = st.text(alphabet=" \t\n", max_size=3)


@BOUNDED
@given(ASCII_VERSIONS, ASCII_VERSIONS, BLANKS, BLANKS)
def test_same_version_ignores_case_and_blanks_only(a: str, b: str, before: str,
                                                    after: str) -> None:
    """A respelled version is the same version; two different versions never are."""
    assert same_version(a, f"{before}{a.upper()}{after}")
    assert same_version(f"{before}{a}{after}", a.lower())
    assert same_version(a, b) == (a.lower() == b.lower())


# --- the Watch against appliance behaviour models --------------------------------------------
#
# A model is a timeline of segments; the runner looks every `step` seconds and feeds the
# Watch what that look observes. Assumptions the Watch relies on, built into the generator:
#
# * Confirmation: any stretch of "old version, services up, no install running" (including
#   passing errors and an unreadable task list within it) that is followed by a move to
#   another version (the target or a third one) is shorter than the confirmation period.
#   That is what the period is for: a longer stable stretch means the install did not apply.
# * Every segment lasts at least one look interval, so the runner sees it: the Watch cannot
#   learn of a restart, an outage or an answer that no look observed.
# * A restart (of the REST service or the appliance) shows as a restart sign (refused or
#   reset connections, 503, a forgotten session); a passing 5xx shows as none.
# * While an install task runs, the task list can be read (the tests of unreadable lists show what
#   happens when it cannot).

NO_ANSWER_KINDS = frozenset({"restart", "passing", "gone"})
# the Watch's stability of the old version runs on through these
CONTINUES = frozenset({"old_up", "unreadable", "passing"})
# the appliance's behaviour before its final move, as steps (weights by repetition):
# "old" answers the old version with services up and a readable, quiet task list;
# "unreadable" the same, but the task list cannot be read; "passing" passing 5xx answers;
# "rest_restart" no answers for a while (at most 2 min), then the old version again;
# "reboot" no answers for a while; "services_down" the old version, key services not up;
# "installing" the old version with an install task running; "task_error" the followed
# install task ended in ERROR (rarer: it ends every run at once); "installing_unreadable"
# (only in the unreadable-list property) an install running while the task list cannot be read.
# After them the appliance makes its final move (FINALS): a reboot (maybe) and the target
# or a third version (services maybe slow to come up), stays on the old version, or stops
# answering for good.
STEPS = ("old",) * 3 + ("unreadable",) * 2 + ("passing",) * 2 + ("rest_restart",) * 3 \
    + ("reboot",) + ("services_down",) * 2 + ("installing",) * 3 + ("task_error",)
SEGMENT_OF_STEP = {"old": "old_up", "unreadable": "unreadable", "passing": "passing",
                   "reboot": "restart", "services_down": "old_down",
                   "installing": "installing", "task_error": "task_error",
                   "installing_unreadable": "installing_unreadable"}
FINALS = ("target", "third", "stays_old", "gone")


def version_of(kind: str) -> str:
    if kind.startswith("target"):
        return TARGET
    if kind.startswith("third"):
        return THIRD
    return OLD


@dataclass(frozen=True)
class Segment:
    kind: str
    start: float
    end: float  # math.inf for the last one
    spelling: str  # how the appliance spells its version in this segment


@dataclass(frozen=True)
class Model:
    segments: tuple[Segment, ...]
    final: str
    grace: float
    confirm: float
    step: float
    accepted: bool

    def index(self, t: float) -> int:
        return next(i for i, s in enumerate(self.segments) if s.start <= t < s.end)

    @property
    def horizon(self) -> float:
        return self.segments[-1].start + self.grace + self.confirm + 3 * self.step

    def stretch_end(self, i: int) -> float:
        """When the old-version stretch around segment `i` ends."""
        while i < len(self.segments) and self.segments[i].kind in CONTINUES:
            i += 1
        return math.inf if i == len(self.segments) else self.segments[i].start


@st.composite
def appliance_models(draw: st.DrawFn, steps: tuple[str, ...] = STEPS) -> Model:
    grace = draw(st.integers(60, 600))
    observed = draw(st.one_of(st.none(), st.integers(10, 400)))
    confirm = confirmation_period(float(grace), None if observed is None else float(observed))
    step = draw(st.integers(5, 30))
    final = draw(st.sampled_from(FINALS))
    leaves_old = final in ("target", "third")
    longest = math.ceil(confirm) - 1  # the longest old stretch before a version change
    plan: list[tuple[str, float]] = []
    stretch = 0

    def add(kind: str, wanted: int) -> None:
        nonlocal stretch
        duration = max(wanted, step)  # every segment is seen by at least one look
        if kind in CONTINUES:
            if leaves_old:
                duration = min(duration, longest - stretch)
            if duration < step:
                return
            stretch += duration
        elif kind != "task_error":  # a task error does not end the old version's stability
            stretch = 0
        plan.append((kind, duration))

    durations = st.one_of(st.integers(1, 90), st.integers(1, 500))
    for name, first, second in draw(st.lists(st.tuples(st.sampled_from(steps), durations,
                                                       durations), max_size=6)):
        if name == "rest_restart":
            add("restart", min(first, 120))
            add("old_up", second)
        else:
            add(SEGMENT_OF_STEP[name], first)
    if leaves_old:
        reboot = draw(st.integers(0, 300))
        if reboot:
            plan.append(("restart", max(reboot, step)))
        down = draw(st.integers(0, 2 * grace))
        if down:
            plan.append((f"{final}_down", max(down, step)))
        plan.append((f"{final}_up", math.inf))
    else:
        plan.append(("old_up" if final == "stays_old" else "gone", math.inf))
    segments: list[Segment] = []
    start = 0.0
    for kind, length in plan:
        spelling = draw(st.sampled_from(spellings(version_of(kind))))
        segments.append(Segment(kind, start, start + length, spelling))
        start += length
    return Model(tuple(segments), final, float(grace), confirm, float(step),
                 draw(st.booleans()))


def look_at(w: Watch, segment: Segment, t: float) -> tuple[Watch, bool]:
    """What one look at `t` observes, fed to the Watch as the runner does; also whether it
    read a running (or failed) install task."""
    kind = segment.kind
    if kind in NO_ANSWER_KINDS:
        return saw_no_answer(w, t, restart_sign=kind != "passing"), False
    up = not kind.endswith("_down")
    w = saw_version(w, t, segment.spelling, up)
    if kind.startswith("target") or not up or kind in ("unreadable", "installing_unreadable"):
        return w, False  # on the target, or services down: the runner reads no tasks
    if kind == "task_error":
        return saw_task_error(w, "install task ended ERROR"), True
    return saw_tasks(w, t, running=kind == "installing"), kind == "installing"


def check_truth(m: Model, verdict: Verdict, t: float, acknowledged: bool) -> None:
    """A final verdict at `t` must match what the appliance really did."""
    i = m.index(t)
    seg = m.segments[i]
    code = verdict.error_code
    if verdict.outcome is Outcome.SUCCEEDED:
        assert seg.kind == "target_up"
        assert same_version(verdict.final_version, TARGET)
    elif code == "SERVICES_DOWN":
        assert seg.kind == "target_down" and t - seg.start > m.grace
    elif code == "UNEXPECTED_VERSION":
        assert seg.kind == "third_up" and same_version(verdict.final_version, THIRD)
    elif code == "UNREACHABLE":
        j = i
        while j > 0 and m.segments[j - 1].kind in NO_ANSWER_KINDS:
            j -= 1
        assert seg.kind in NO_ANSWER_KINDS and t - m.segments[j].start > m.grace
    elif code == "INSTALL_ERROR":
        assert any(s.kind == "task_error" and s.start <= t for s in m.segments)
    elif code in ("VERSION_MISMATCH", "INSTALL_UNCONFIRMED"):
        assert seg.kind in ("old_up", "unreadable")
        assert not same_version(seg.spelling, TARGET)
        assert same_version(verdict.final_version, OLD)
        assert m.final not in ("target", "third") or m.stretch_end(i) - t >= m.confirm
        expected = "VERSION_MISMATCH" if m.accepted or acknowledged else "INSTALL_UNCONFIRMED"
        assert code == expected
    else:
        pytest.fail(f"unexpected verdict {verdict}")


def follow(m: Model) -> None:
    """Look every `step` seconds, as the runner does, until a final verdict; check it."""
    w = start_watch(target=TARGET, from_version=OLD, accepted=m.accepted,
                    reboot_grace=m.grace, confirm=m.confirm)
    acknowledged = False
    t = 0.0
    while t <= m.horizon:
        w, running = look_at(w, m.segments[m.index(t)], t)
        acknowledged = acknowledged or running
        verdict = judge(w, t)
        if verdict.outcome is not Outcome.WAIT:
            check_truth(m, verdict, t, acknowledged)
            return
        t += m.step
    pytest.fail(f"no verdict by {m.horizon:g} s (final: {m.final})")


@BOUNDED
@given(appliance_models())
def test_watch_verdicts_match_the_appliance(m: Model) -> None:
    """Whatever the appliance does (restarts, outages, slow services, unreadable task lists,
    long installs), the first final verdict is true of it, and one comes in time."""
    follow(m)


@settings(BOUNDED, database=None, phases=[Phase.explicit, Phase.generate])  # no shrinking
@given(appliance_models(steps=(*STEPS, "installing_unreadable", "installing_unreadable")))
@example(Model((Segment("old_up", 0, 100, OLD), Segment("installing_unreadable", 100, 400, OLD),
                Segment("target_down", 400, 460, TARGET), Segment("target_up", 460, math.inf,
                                                                   TARGET)),
               final="target", grace=300, confirm=120, step=10, accepted=True))
def test_watch_verdicts_when_the_task_list_fails_during_an_install(m: Model) -> None:
    """The same property, when the task list may be unreadable while an install runs (the
    example: quiet until 100 s, then installing with an unreadable list until the reboot
    to the target at 400 s; the task fails at 120 s)."""
    follow(m)


def test_a_finished_task_is_never_adopted_for_a_running_one_without_an_id() -> None:
    """A task without an id runs, and a finished task started after the send is listed: the
    finished one may be somebody else's, so the install is followed by its version."""
    verdict = after_lost_answer(
        target=TARGET, from_version=OLD, version=OLD,
        listing=Listing(running_ids=(None,), newer_ids=("t-9",)), answered_throughout=True,
    )
    assert verdict.action is LostAction.FOLLOW and verdict.task_id is None


# ---------------------------------------------------------------------- a held slot
@pytest.mark.parametrize(
    ("version", "listing_read", "install_running", "services_up", "free"),
    [
        ("9.0.1", True, False, True, True),  # answered, key services up, nothing running
        (None, True, False, True, False),  # no version: still rebooting, or unreachable
        ("9.0.1", False, False, True, False),  # the list could not be read: no evidence
        ("9.0.1", True, True, True, False),  # an install still runs
        ("9.0.1", True, False, False, False),  # services still starting
    ],
)
def test_a_held_slot_is_freed_only_on_positive_evidence_of_idleness(
    version: str | None, listing_read: bool, install_running: bool, services_up: bool,
    free: bool,
) -> None:
    assert slot_free(version=version, listing_read=listing_read,
                     install_running=install_running, services_up=services_up) is free



# ---------------------------------------------------------------------- what the operator reads
# (added with `make mutation`: each test below kills mutants of outcome.py that the tests
# above let live; see tools/mutation.sh)


def test_documented_periods_and_clock_skew() -> None:
    """The numbers the module documents: a fleet with no observed restart confirms "did
    not apply" after two minutes; a finished task counts as maybe ours when it started up
    to ten minutes before the send (appliance clocks drift), not a second more."""
    assert confirmation_period(3600, None) == 120
    assert confirmation_period(3600, 90) == 180
    ten_minutes = timedelta(minutes=10)
    assert listing_of([("t-1", "SUCCESS", SENT_AT - ten_minutes)], SENT_AT).newer_ids == ("t-1",)
    assert listing_of([("t-1", "ERROR", SENT_AT - ten_minutes - timedelta(seconds=1))],
                      SENT_AT) == Listing()


def test_an_unread_task_list_for_more_than_a_quarter_of_the_period_restarts_the_clock() -> None:
    """Quiet reads 30 s apart (a quarter of the 120 s period) with an unread list between
    them keep the stability running; 50 s without a quiet read start it over."""
    short = watch()
    for look in (seen(100, OLD), seen(110, OLD, running=None), *old_quiet(130, 160, 190, 220)):
        short = observe(short, look)
    assert judge(short, 220).error_code == "VERSION_MISMATCH"
    long = watch()
    for look in (seen(100, OLD), seen(120, OLD, running=None), *old_quiet(150, 220)):
        long = observe(long, look)
    assert judge(long, 220).outcome is Outcome.WAIT
    long = observe(long, seen(270, OLD))
    assert judge(long, 270).error_code == "VERSION_MISMATCH"  # 120 s after 150 s
    # after an unread stretch the clock starts again at the first quiet read (150 s), not
    # at the unread look that ended the stretch (140 s)
    restarted = watch()
    for look in (seen(100, OLD), seen(110, OLD, running=None), seen(140, OLD, running=None),
                 *old_quiet(150, 260)):
        restarted = observe(restarted, look)
    assert judge(restarted, 260).outcome is Outcome.WAIT
    restarted = observe(restarted, seen(270, OLD))
    assert judge(restarted, 270).error_code == "VERSION_MISMATCH"


def follow_looks(w: Watch, *looks: Look) -> Verdict:
    for look in looks:
        w = observe(w, look)
    return judge(w, looks[-1].at)


def test_verdict_messages_as_the_operator_reads_them() -> None:
    """The exact sentences stored with a failed task (and none with a success)."""
    plain = start_watch(target=TARGET, from_version=OLD, accepted=True, reboot_grace=GRACE,
                        confirm=CONFIRM)  # no outage seen unless said
    unconfirmed = start_watch(target=TARGET, from_version=OLD, accepted=False,
                              reboot_grace=GRACE, confirm=CONFIRM)
    cases = {
        "success": (follow_looks(plain, seen(0, TARGET, running=None)), None),
        "services-down": (
            follow_looks(plain, seen(0, TARGET, up=False, running=None),
                         seen(301, TARGET, up=False, running=None)),
            f"{TARGET} is installed but the key services are not running 300 s later"),
        "third-version": (
            follow_looks(plain, seen(0, THIRD)),
            f"the appliance came back on {THIRD}: neither the version it had ({OLD}) nor the "
            f"target {TARGET}"),
        "unreachable": (
            follow_looks(plain, lost(0), lost(301)),
            "the appliance did not answer for more than reboot_grace 300 s"),
        "stayed": (
            follow_looks(plain, *old_quiet(0, 120)),
            f"the appliance stayed on {OLD}, not {TARGET}, with its key services up and no "
            "install running for 120 s: the install did not apply"),
        "came-back": (
            follow_looks(plain, lost(0), *old_quiet(10, 130)),
            f"the appliance came back on {OLD}, not {TARGET}, with its key services up and no "
            "install running for 120 s: the install did not apply"),
        "unconfirmed": (
            follow_looks(unconfirmed, *old_quiet(0, 120)),
            f"the answer to the install was lost and the appliance stayed on {OLD} with no "
            "install running for 120 s: the install may never have started (retry-failed "
            "sends it again)"),
    }
    for name, (verdict, message) in cases.items():
        assert verdict.message == message, name
    success = cases["success"][0]
    assert (success.outcome, success.error_code) == (Outcome.SUCCEEDED, None)


def test_a_task_error_before_any_version_was_read_has_no_final_version() -> None:
    """The install task failed before the appliance answered with a version: the task
    shows no final version rather than an empty one."""
    verdict = judge(saw_task_error(watch(), "no space left"), 0)
    assert verdict == Verdict(Outcome.FAILED, "INSTALL_ERROR", "no space left")
    assert verdict.final_version is None


LOST_REASONS: list[tuple[Evidence, str]] = [
    (replace(ALL_EVIDENCE, version=TARGET), "the appliance reports the target version"),
    (replace(ALL_EVIDENCE, listing=None), "the task list could not be read"),
    (replace(ALL_EVIDENCE, listing=Listing(running_ids=("t-7",))),
     "a task is running on the appliance"),
    (replace(ALL_EVIDENCE, listing=Listing(running_ids=(None,))),
     "a task without an id is running"),
    (replace(ALL_EVIDENCE, version=None), "the version could not be read"),
    (replace(ALL_EVIDENCE, listing=Listing(newer_ids=("t-8",))),
     "a task started since the install was sent"),
    (replace(ALL_EVIDENCE, version=THIRD), f"the version changed to {THIRD}"),
    (replace(ALL_EVIDENCE, answered_throughout=False),
     "the appliance did not answer throughout (it may have restarted and forgotten its "
     "tasks)"),
    (ALL_EVIDENCE, "no task since the send, the version unchanged, and the appliance "
                   "answered throughout"),
]


@pytest.mark.parametrize(("evidence", "reason"), LOST_REASONS)
def test_lost_answer_reasons_as_logged(evidence: Evidence, reason: str) -> None:
    """The runner logs why it resends, adopts, follows or looks again, in these words."""
    assert evidence.verdict().reason == reason


def test_decision_words_in_the_logs() -> None:
    """Answers, next steps and outcomes appear in the logs (and the outcome in the task's
    record) as their lower-case names."""
    for kind in (Answer, PostAction, LostAction, Outcome):
        assert {m.name.lower(): str(m) for m in kind} == {m.name.lower(): m.name.lower()
                                                            for m in kind}


def test_services_down_is_not_concluded_while_the_appliance_does_not_answer() -> None:
    """On the target with its services down, then passing errors: the task waits for the
    appliance to answer (or fails UNREACHABLE once the silence outlasts reboot_grace), it
    is not failed SERVICES_DOWN on the strength of an answer from before the silence."""
    w = watch()
    for look in (seen(0, TARGET, up=False, running=None), lost(100, restart_sign=False),
                 lost(320, restart_sign=False)):
        w = observe(w, look)
    assert judge(w, 320).outcome is Outcome.WAIT
    w = observe(w, lost(401, restart_sign=False))
    assert (judge(w, 401).outcome, judge(w, 401).error_code) == (Outcome.TIMED_OUT,
                                                                 "UNREACHABLE")
