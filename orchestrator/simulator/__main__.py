"""`python -m orchestrator.simulator --appliances 20 --sites 2 --port 9450 ...`"""

import sys

from orchestrator.simulator.cli import main

sys.exit(main())
