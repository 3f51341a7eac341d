"""Failpoints: let the chaos benchmark kill the engine at the worst moments.

Off unless the environment variable `ORCH_FAILPOINTS` names them, e.g.
`ORCH_FAILPOINTS="after_install_sent=0.05"`: at each pass through the named point the
process SIGKILLs itself with that probability (seeded by `ORCH_FAILPOINTS_SEED`). Points:

- `after_install_sent`: the appliance accepted the install; INSTALLING is not recorded yet
  (the crash window that the DISPATCHING intent record and reconciliation exist for).
- `after_claim`: tasks were claimed (DISPATCHING) and no install was sent yet.

This never runs in production unless someone sets the variable on purpose.
"""

from __future__ import annotations

import os
import random
import signal

_spec = os.environ.get("ORCH_FAILPOINTS", "")
_points: dict[str, float] = {}
for _item in filter(None, (part.strip() for part in _spec.split(","))):
    _name, _, _rate = _item.partition("=")
    _points[_name] = float(_rate or "1")
_rng = random.Random(os.environ.get("ORCH_FAILPOINTS_SEED", "0") + str(os.getpid()))


def hit(name: str) -> None:
    """Crash here (SIGKILL, no clean-up at all) when the failpoint fires."""
    rate = _points.get(name)
    if rate and _rng.random() < rate:
        os.kill(os.getpid(), signal.SIGKILL)
