"""Fleet update orchestrator."""

__version__ = "0.1.0"
