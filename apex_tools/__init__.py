"""apex-tools: deploy a containerized TripleO overcloud as idempotent Invoke targets."""

__version__ = "0.1.0"
