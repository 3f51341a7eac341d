"""`python -m orchestrator.simulator` as a user runs it: a separate process, real HTTP."""

from __future__ import annotations

import base64
import csv
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import LoggedPopen

# three polls of at most 30 s each, and the simulator's start and stop
pytestmark = pytest.mark.timeout(150)

V0 = "9.0.0-10010"
V1 = "9.0.1-20020"
AUTH = "Basic " + base64.b64encode(b"admin:admin").decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(method: str, url: str, headers: dict[str, str] | None = None,
            timeout: float = 2.0) -> tuple[int, Any]:
    """(status, parsed JSON or None); connection failures raise OSError."""
    req = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            body = resp.read()
            return resp.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, body or None


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    port = free_port()
    inventory = tmp_path / "fleet.csv"
    proc = LoggedPopen(
        [sys.executable, "-m", "orchestrator.simulator", "--appliances", "20", "--sites", "2",
         "--port", str(port), "--write-inventory", str(inventory), "--install-seconds", "0.5",
         "--reboot-seconds", "0.5", "--services-starting-seconds", "0.3",
         "--credentials", "admin:admin"],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if request("GET", f"{url}/_sim/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.05)
        yield url, inventory, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_simulate_install_through_reboot(
    simulator: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, inventory, proc = simulator
    base = f"{url}/sim-00001/api/rest/configure/v1"

    status, body = request("POST", f"{base}/session", {"Authorization": AUTH})
    assert status == 200
    session = {"x-dr-session": body["session_id"]}
    assert request("GET", f"{base}/appliance", session)[1]["appliance_version"] == V0
    status, task = request(
        "POST", f"{base}/appliance/update-manager/updates/{V1}/actions/install", session)
    assert status == 202 and task["status"] == "QUEUED"

    seen: list[str] = []
    deadline = time.monotonic() + 30
    while True:  # poll through the reboot until the old session is refused
        assert time.monotonic() < deadline, seen
        try:
            status, body = request("GET", f"{base}/tasks/{task['id']}", session, timeout=1)
        except OSError:
            seen.append("down")
        else:
            if status == 401:
                break
            seen.append(body["status"])
        time.sleep(0.05)
    assert "RUNNING" in seen and "down" in seen

    deadline = time.monotonic() + 30
    while True:  # log in again, wait for the key services, read the version
        assert time.monotonic() < deadline
        status, body = request("POST", f"{base}/session", {"Authorization": AUTH})
        assert status == 200
        session = {"x-dr-session": body["session_id"]}
        services = request("GET", f"{base}/services", session)[1]
        if all(s["is_running"] for s in services):
            break
        time.sleep(0.05)
    assert request("GET", f"{base}/tasks/{task['id']}", session)[0] == 404
    assert request("GET", f"{base}/appliance", session)[1]["appliance_version"] == V1

    status, stats = request("GET", f"{url}/_sim/stats")
    assert status == 200
    assert stats["installs_accepted"] == 1 and stats["duplicate_installs"] == 0
    assert stats["versions"] == {V0: 19, V1: 1}
    assert stats["appliances"]["sim-00001"]["installs_accepted"] == 1

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and url in lines[0]
    assert "admin:admin" not in out + err

    with inventory.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["name", "base_url", "site", "tags", "timezone", "credentials_ref",
                       "tls_ca_file", "tls_thumbprint"]
    assert len(rows) == 21
    assert rows[1][:3] == ["sim-00001", base, "site-01"]
    assert rows[20][0] == "sim-00020" and rows[20][2] == "site-02"


def test_simulate_bad_usage_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.simulator", "--appliances", "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2 and "appliances" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.simulator", "--credentials", "admin-secret"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2 and "admin-secret" not in result.stderr
