"""Requests and their kinds (forget, restore, learn), the protocols that make them, and the data they hand a
method."""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module that defines it, imported on first use (PEP 562): the kinds load no torch
_EXPORTS = {
    "REQUEST_KINDS": "base", "RequestKind": "base", "register_kind": "base", "Request": "base",
    "RequestData": "base", "RequestRecord": "base", "RunRecord": "base", "deep_failures": "base",
    "retained_drop": "base",
    "Protocol": "protocol", "make_requests": "protocol", "make_tasks": "protocol", "class_order": "protocol"}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
