"""`python -m orchestrator.simulator --appliances 20 --sites 2 --port 9450 ...`"""

import sys

from orchestrator.cli.simulator import main

sys.exit(main())
