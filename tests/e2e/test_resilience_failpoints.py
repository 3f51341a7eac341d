"""The failpoints themselves: the deterministic form fires on exactly the N-th hit and logs
it before the SIGKILL; the probability form repeats with its seed."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from orchestrator.engine.failpoints import Failpoint, FailpointSpecError, parse
from tests.helpers import ROOT, VENV_BIN

PROGRAM = """
from orchestrator.engine import failpoints
for i in range(1, 11):
    print(i, flush=True)
    failpoints.hit("after_install_sent")
    failpoints.hit("after_claim")
"""


def _run(tmp_path: Path, spec: str, seed: str = "0") -> tuple[int, list[str], list[str]]:
    log = tmp_path / "failpoints.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env |= {"ORCH_FAILPOINTS": spec, "ORCH_FAILPOINTS_SEED": seed,
            "ORCH_FAILPOINTS_LOG": str(log)}
    out = tmp_path / "out.txt"
    with open(out, "wb") as fh:
        proc = subprocess.run([str(VENV_BIN / "python"), "-c", PROGRAM], env=env, cwd=ROOT,
                              stdout=fh, stderr=subprocess.STDOUT, timeout=60, check=False)
    logged = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, out.read_text().split(), [line.split(" pid=")[0] for line in logged]


def test_parse() -> None:
    assert parse("") == {}
    assert parse("after_install_sent=#3, after_claim=0.25,x") == {
        "after_install_sent": Failpoint(nth=3), "after_claim": Failpoint(rate=0.25),
        "x": Failpoint(rate=1.0)}
    for bad in ("a=#0", "a=#x", "a=2", "=1", "a=-0.1"):
        with pytest.raises(FailpointSpecError):
            parse(bad)


@pytest.mark.timeout(120)
def test_nth_hit_fires_once_and_is_logged_before_the_kill(tmp_path: Path) -> None:
    rc, printed, logged = _run(tmp_path, "after_install_sent=#4")
    assert rc == -signal.SIGKILL
    assert printed == ["1", "2", "3", "4"]
    assert logged == ["after_install_sent hit=4"]
    rc, printed, logged = _run(tmp_path, "after_claim=#2")
    assert (rc, printed, logged) == (-signal.SIGKILL, ["1", "2"], ["after_claim hit=2"])
    # never reached: no kill, nothing logged
    rc, printed, logged = _run(tmp_path, "after_claim=#11")
    assert (rc, len(printed), logged) == (0, 10, [])


@pytest.mark.timeout(120)
def test_probability_form_repeats_with_its_seed(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "after_install_sent=0.3", seed="7") for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0][0] == -signal.SIGKILL, "p = 0.3 over 10 hits fires for this seed"
