"""Inventory import benchmark: 10,000 rows, then the same file with one bad row.

Runs `orchestrator appliances import` as a user would (a real process) against a fresh
database: ORCHESTRATOR_DATABASE_URL / TEST_DATABASE_URL when set, else the embedded server in
a temporary data directory. Prints one JSON object.

    .venv/bin/python bench/import.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from orchestrator.store.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "orchestrator"
HEADER = "name,base_url,site,tags,timezone,credentials_ref,tls_ca_file,tls_thumbprint\n"
ZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC", ""]


def write_inventory(path: Path, rows: int, bad_line: int | None = None) -> None:
    with path.open("w") as fh:
        fh.write(HEADER)
        for i in range(rows):
            line = i + 2
            url = f"https://appl-{i:05d}.example.net/api/rest/configure/v1"
            if line == bad_line:
                url = "ftp://not-http.example.net"
            fh.write(
                f"appl-{i:05d},{url},site-{i % 40:02d},vr;prod;ring-{i % 3},{ZONES[i % 5]},"
                f"env:APPLIANCE_CREDENTIALS,,\n"
            )


def with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


async def count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM appliances"))
    finally:
        await conn.close()


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    result = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True,
                            cwd=ROOT, check=False)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-import-"))
    server_url = os.environ.get("ORCHESTRATOR_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    embedded = None
    if not server_url:
        embedded = EmbeddedPostgres(tmp / "data", announce=lambda _m: None)
        server_url = embedded.start()
    dbname = f"bench_import_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(admin(server_url, f'CREATE DATABASE "{dbname}"'))
        url = with_db(server_url, dbname)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        env |= {"ORCHESTRATOR_DATABASE_URL": url, "ORCHESTRATOR_LOG_FORMAT": "json"}
        _, migrated = run(["migrate"], env)
        assert migrated.returncode == 0, migrated.stderr
        good, bad = tmp / "good.csv", tmp / "bad.csv"
        bad_line = opts.rows // 2 + 1
        write_inventory(good, opts.rows)
        write_inventory(bad, opts.rows, bad_line=bad_line)
        # the bad file first, on the empty database: it must import nothing
        bad_s, bad_run = run(["appliances", "import", str(bad)], env)
        after_bad = asyncio.run(count(url))
        good_s, good_run = run(["appliances", "import", str(good)], env)
        after_good = asyncio.run(count(url))
        again_s, _ = run(["appliances", "import", str(good)], env)
        print(json.dumps({
            "rows": opts.rows,
            "import_seconds": round(good_s, 3),
            "reimport_seconds": round(again_s, 3),
            "imported": after_good,
            "import_ok": good_run.returncode == 0 and after_good == opts.rows,
            "bad_file_seconds": round(bad_s, 3),
            "bad_file_exit_code": bad_run.returncode,
            "bad_file_imported": after_bad,
            "bad_line": bad_line,
            "bad_line_named": f"line {bad_line}:" in bad_run.stderr,
            "goal_seconds": 5.0,
            "database": "embedded" if embedded else "external",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
        }))
        return 0
    finally:
        asyncio.run(admin(server_url, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        if embedded:
            embedded.release()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
