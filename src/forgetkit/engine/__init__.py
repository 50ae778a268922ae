"""The runner, and nothing else: the run's config (``config``: torch-free), every check before any work (``plan``),
one request and its step loop (``editor``), and a sequence of requests with resume (``run``)."""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module that defines it, imported on first use (PEP 562): the configs and the plan load no torch
_EXPORTS = {
    "RunConfig": "config", "TrainConfig": "config", "EvalConfig": "config", "VerifyConfig": "config",
    "ProtocolConfig": "config", "PretrainConfig": "config", "plan_run": "plan", "plan_pretrain": "plan",
    "Editor": "editor", "run_requests": "run", "run_forgetting": "run", "ledger_entry": "run"}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
