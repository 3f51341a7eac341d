"""A simulated appliance fleet: N appliances behind one aiohttp server, with fault injection.

```python
from orchestrator.simulator import SimulatorConfig, FaultProfile, run_simulator

async with run_simulator(SimulatorConfig(appliances=20, install_seconds=0.5)) as sim:
    sim.base_url("sim-00001")  # http://127.0.0.1:PORT/sim-00001/api/rest/configure/v1
```
See docs/simulator.md.
"""

from orchestrator.simulator.config import SimulatorConfig, SimulatorConfigError
from orchestrator.simulator.faults import (
    FAULTS,
    FaultParams,
    FaultProfile,
    FaultProfileError,
)
from orchestrator.simulator.fleet import ERROR_CODES, KEY_SERVICES
from orchestrator.simulator.server import Simulator, run_simulator

__all__ = [
    "ERROR_CODES",
    "FAULTS",
    "KEY_SERVICES",
    "FaultParams",
    "FaultProfile",
    "FaultProfileError",
    "Simulator",
    "SimulatorConfig",
    "SimulatorConfigError",
    "run_simulator",
]
