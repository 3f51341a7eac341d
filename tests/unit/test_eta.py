"""The completion forecast: hand-computed cases, windows, and a minute-stepping reference."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.domain.eta import ApplianceSlot, InFlight, WindowsFor, forecast_completion
from orchestrator.domain.windows import (
    WindowError,
    WindowSpec,
    can_start_any,
    covering,
    parse_window,
)

NOW = datetime(2026, 5, 4, 12, tzinfo=UTC)  # a Monday, noon UTC
MINUTE = timedelta(minutes=1)


def at(**delta: float) -> datetime:
    return NOW + timedelta(**delta)


def slots(site: str, count: int, *tags: str, tz: str | None = None) -> list[ApplianceSlot]:
    return [ApplianceSlot(site, tuple(tags), tz)] * count


def window(name: str, cron: str, duration: str, cutoff: str = "0", zone: str = "UTC",
           sites: Sequence[str] = (), tags: Sequence[str] = ()) -> WindowSpec:
    return parse_window({"name": name, "cron": cron, "duration": duration, "timezone": zone,
                         "cutoff": cutoff, "sites": list(sites), "tags": list(tags)})


def by_coverage(specs: Sequence[WindowSpec]) -> WindowsFor:
    """What the engine does: the windows covering the appliance, in its own zone."""
    def windows_for(slot: ApplianceSlot) -> tuple[list[WindowSpec], str | None]:
        return covering(specs, slot.site, slot.tags), slot.timezone
    return windows_for


def forecast(waves: Sequence[Sequence[ApplianceSlot]], install: float = 60, limit: int = 3,
             per_site: int | None = None, in_flight: Sequence[InFlight] = (),
             windows_for: WindowsFor | None = None, now: datetime = NOW) -> datetime:
    return forecast_completion(now, waves, install, limit, per_site, in_flight, windows_for)


# --- without windows -----------------------------------------------------------------------


def test_ten_appliances_three_at_a_time_take_four_rounds() -> None:
    assert forecast([slots("ams", 10)]) == at(seconds=240)


def test_nothing_left_is_done_now() -> None:
    assert forecast([]) == NOW
    assert forecast([[], []]) == NOW
    assert forecast([], in_flight=[InFlight("ams", at(seconds=90))]) == at(seconds=90)


def test_waves_run_one_after_the_other() -> None:
    # wave 1: 1 appliance (60 s); wave 2: 4 appliances, 3 at a time (120 s)
    assert forecast([slots("ams", 1), slots("ams", 4)]) == at(seconds=180)
    # an empty wave in between changes nothing
    assert forecast([slots("ams", 1), [], slots("ams", 4)]) == at(seconds=180)


def test_per_site_limit() -> None:
    # 6 at ams and 2 at nyc, 10 at a time but 2 per site: ams takes 3 rounds
    waves = [slots("ams", 6) + slots("nyc", 2)]
    assert forecast(waves, limit=10, per_site=2) == at(seconds=180)
    assert forecast(waves, limit=10) == at(seconds=60)
    # 4 at a time, 2 per site: round 1 ams+ams+nyc+nyc, then ams x2, ams x2
    assert forecast(waves, limit=4, per_site=2) == at(seconds=180)


def test_plan_order_is_kept_when_a_site_is_full() -> None:
    # limit 2, per site 1: ams-ams-nyc -> ams and nyc start, the second ams waits 60 s
    waves = [[ApplianceSlot("ams"), ApplianceSlot("ams"), ApplianceSlot("nyc")]]
    assert forecast(waves, limit=2, per_site=1) == at(seconds=120)


def test_in_flight_installs_hold_slots_and_finish_the_current_wave() -> None:
    running = [InFlight("ams", at(seconds=30)), InFlight("ams", at(seconds=45))]
    # 3 at a time: 1 slot free now, 2 more at 30 s and 45 s
    # starts: 0 -> 60, 30 -> 90, 45 -> 105; then at 60 -> 120 ... 4 appliances:
    assert forecast([slots("nyc", 4)], in_flight=running) == at(seconds=120)
    # per-site 2 at ams: both ams slots are taken until 30 s and 45 s
    assert forecast([slots("ams", 2)], in_flight=running, per_site=2) == at(seconds=105)
    # the next wave waits for the in-flight installs of the current one
    late = [InFlight("ams", at(seconds=500))]
    assert forecast([[], slots("ams", 1)], in_flight=late) == at(seconds=560)
    # an install expected in the past is taken to end now
    past = [InFlight("ams", at(seconds=-100))] * 3
    assert forecast([slots("ams", 1)], in_flight=past) == at(seconds=60)


def test_in_flight_beyond_the_limit_blocks_new_starts() -> None:
    running = [InFlight("ams", at(seconds=s)) for s in (10, 20, 30, 40)]
    # limit 3: the first start is when the 4th... i.e. when only 2 remain running (20 s)
    assert forecast([slots("nyc", 1)], in_flight=running) == at(seconds=80)


def test_install_seconds_need_not_be_whole() -> None:
    assert forecast([slots("ams", 2)], install=0.5, limit=1) == at(seconds=1)
    assert forecast([slots("ams", 2)], install=0, limit=1) == NOW


# --- with windows ----------------------------------------------------------------------------


def test_appliances_wait_for_their_window() -> None:
    nightly = window("nightly", "0 22 * * *", "4h", "30m", sites=["ams"])
    cover = by_coverage([nightly])
    # 10 installs of 1 h, 5 at a time: 22:00 and 23:00 -> done at 00:00
    waves = [slots("ams", 10)]
    assert forecast(waves, install=3600, limit=5, windows_for=cover) == at(hours=12)
    # 20: rounds at 22, 23, 00, 01 (the last start allowed is 01:30) -> 02:00
    waves = [slots("ams", 20)]
    assert forecast(waves, install=3600, limit=5, windows_for=cover) == at(hours=14)
    # 25: the 5th round would start at 02:00, past the cutoff: next night 22:00 -> 23:00
    waves = [slots("ams", 25)]
    assert forecast(waves, install=3600, limit=5, windows_for=cover) == at(days=1, hours=11)


def test_a_start_exactly_at_the_cutoff_is_allowed() -> None:
    nightly = window("nightly", "0 22 * * *", "4h", "1h", sites=["ams"])
    # 90-minute installs, one at a time: 22:00, 23:30, 01:00 (= 02:00 - 1h), then next day
    waves = [slots("ams", 3)]
    done = forecast(waves, install=5400, limit=1, windows_for=by_coverage([nightly]))
    assert done == at(hours=14, minutes=30)
    waves = [slots("ams", 4)]
    done = forecast(waves, install=5400, limit=1, windows_for=by_coverage([nightly]))
    assert done == at(days=1, hours=11, minutes=30)


def test_uncovered_appliances_do_not_wait() -> None:
    nightly = window("nightly", "0 22 * * *", "4h", sites=["ams"])
    waves = [slots("ams", 1) + slots("nyc", 3)]
    cover = by_coverage([nightly])
    # nyc installs run now; the ams one at 22:00
    assert forecast(waves, install=60, limit=1, windows_for=cover) == at(hours=10, minutes=1)
    # and a wave with only windowed appliances delays the next wave
    waves = [slots("ams", 1), slots("nyc", 1)]
    assert forecast(waves, install=60, limit=1, windows_for=cover) == at(hours=10, minutes=2)


def test_a_closed_site_does_not_block_an_open_one() -> None:
    ams = window("ams", "0 22 * * *", "4h", sites=["ams"])
    nyc = window("nyc", "0 12 * * *", "4h", sites=["nyc"])
    waves = [slots("ams", 3) + slots("nyc", 3)]
    cover = by_coverage([ams, nyc])
    # nyc runs from noon, one at a time: done 12:03; ams from 22:00: 22:03
    assert forecast(waves, install=60, limit=1, windows_for=cover) == at(hours=10, minutes=3)


def test_any_covering_window_will_do_and_the_appliance_zone_counts() -> None:
    by_site = window("site", "0 22 * * *", "1h", sites=["ams"])
    by_tag = window("tag", "0 14 * * *", "1h", tags=["gold"])
    cover = by_coverage([by_site, by_tag])
    assert forecast([slots("ams", 1, "gold")], windows_for=cover) == at(hours=2, minutes=1)
    assert forecast([slots("ams", 1)], windows_for=cover) == at(hours=10, minutes=1)
    # 22:00 in Kolkata is 16:30 UTC
    kolkata = slots("ams", 1, tz="Asia/Kolkata")
    assert forecast([kolkata], windows_for=cover) == at(hours=4, minutes=31)


def test_windows_that_never_open_are_reported() -> None:
    rare = window("rare", "0 0 * 2 MON#5", "1h", sites=["ams"])
    with pytest.raises(WindowError, match="never opens"):
        forecast([slots("ams", 1)], windows_for=by_coverage([rare]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"install": -1}, "install_seconds"), ({"install": float("nan")}, "install_seconds"),
     ({"limit": 0}, "max_concurrency"), ({"per_site": 0}, "per_site_concurrency"),
     ({"now": datetime(2026, 1, 1)}, "aware")],
)
def test_bad_arguments(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        forecast([slots("ams", 1)], **changes)  # type: ignore[arg-type]


def test_ten_thousand_appliances_over_several_windows() -> None:
    """Timing goals live in bench/: this only runs the size and checks plausibility."""
    specs = [
        window("ams", "0 22 * * 1-5", "4h", "30m", "Europe/Amsterdam", sites=["ams"]),
        window("nyc", "0 2 * * *", "3h", "45m", "America/New_York", sites=["nyc"]),
        window("lab", "*/30 * * * *", "20m", "5m", tags=["lab"]),
        window("blr", "30 23 * * 6,0", "6h", "1h", "Asia/Kolkata", sites=["blr"]),
    ]
    rng = random.Random(7)
    sites = ["ams", "nyc", "blr", "sfo", "syd"]
    fleet = [ApplianceSlot(rng.choice(sites), ("lab",) if rng.random() < 0.1 else (),
                           rng.choice([None, None, "Australia/Lord_Howe"]))
             for _ in range(10_000)]
    waves = [fleet[:1], fleet[1:100], fleet[100:5000], fleet[5000:]]
    done = forecast(waves, install=900, limit=200, per_site=50,
                    windows_for=by_coverage(specs))
    # at least the work divided by the limit; windows stretch it over days, not years
    assert done >= NOW + timedelta(seconds=900 * 10_000 / 200)
    assert done < NOW + timedelta(days=60)
    assert done.tzinfo is UTC


# --- against a minute-stepping reference ---------------------------------------------------


def reference(waves: Sequence[Sequence[ApplianceSlot]], install_minutes: int, limit: int,
              per_site: int | None, windows_for: WindowsFor) -> datetime:
    """The same rules, brute force: every minute, end what is due, then start whatever may
    start in plan order."""
    clock = NOW
    for wave in waves:
        pending = list(wave)
        running: list[tuple[datetime, str]] = []
        while pending or running:
            running = [(ends, site) for ends, site in running if ends > clock]
            busy: dict[str, int] = {}
            for _, site in running:
                busy[site] = busy.get(site, 0) + 1
            waiting = []
            for slot in pending:
                specs, tz = windows_for(slot)
                if (len(running) < limit
                        and (per_site is None or busy.get(slot.site, 0) < per_site)
                        and (not specs or can_start_any(specs, clock, tz))):
                    running.append((clock + install_minutes * MINUTE, slot.site))
                    busy[slot.site] = busy.get(slot.site, 0) + 1
                else:
                    waiting.append(slot)
            pending = waiting
            if not pending and running:
                clock = max(ends for ends, _ in running)
                running = []
            elif pending:
                clock += MINUTE
    return clock


REFERENCE_WINDOWS = [
    window("a", "0,30 * * * *", "20m", "5m", sites=["a"]),
    window("b", "15 */2 * * *", "45m", "30m", "Asia/Kolkata", sites=["b"]),
    window("gold", "*/10 * * * *", "3m", tags=["gold"]),
    window("c", "0 13,15 * * *", "1h", "10m", "Europe/Berlin", sites=["c"]),
]
SLOTS = st.builds(ApplianceSlot, st.sampled_from(["a", "b", "c", "d"]),
                  st.sampled_from([(), (), ("gold",)]),
                  st.sampled_from([None, None, "Australia/Lord_Howe"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    waves=st.lists(st.lists(SLOTS, max_size=12), min_size=1, max_size=3),
    install_minutes=st.integers(1, 40),
    limit=st.integers(1, 5),
    per_site=st.one_of(st.none(), st.integers(1, 3)),
)
def test_agrees_with_a_minute_stepping_reference(
    waves: list[list[ApplianceSlot]], install_minutes: int, limit: int, per_site: int | None,
) -> None:
    cover = by_coverage(REFERENCE_WINDOWS)
    expected = reference(waves, install_minutes, limit, per_site, cover)
    found = forecast(waves, install=install_minutes * 60, limit=limit, per_site=per_site,
                     windows_for=cover)
    assert found == expected
