"""Helpers shared by the tests (imported as ``from helpers import ...``; pytest puts this folder on the path)."""


def batch(forget, retain=None) -> dict:
    """One training step's batch of the forget kind's two streams, as the runner hands it to a method."""
    return {"forget": forget, "retain": retain}
