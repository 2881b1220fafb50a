"""Importers for CRM exports: each turns one CRM's own export files into a `DealHistory`.

`convert_export(kind, path)` returns the history with its import report (what was dropped, not mapped
or not tracked, and the labels of the ids used as keys); `read_export(kind, path)` returns the history
only. Converters never write anything: they return a complete history or raise
`HistoryValidationError` naming the export file, row and column.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from features.history import DealHistory
from training.importers.common import CrmImport, ImportReport, Note

CRMS = ("salesforce", "hubspot", "pipedrive", "odoo")

__all__ = ["CRMS", "CrmImport", "ImportReport", "Note", "convert_export", "read_export"]


def _converter(kind: str) -> Callable[[str | Path], CrmImport]:
    if kind not in CRMS:
        raise ValueError(f"unknown CRM {kind!r}; use one of {', '.join(CRMS)}")
    module = import_module(f"training.importers.{kind}")
    converter: Callable[[str | Path], CrmImport] = getattr(module, f"import_{kind}")
    return converter


def convert_export(kind: str, path: str | Path) -> CrmImport:
    """Convert the export folder of CRM `kind` (one of CRMS) into a history and its import report."""
    return _converter(kind)(path)


def read_export(kind: str, path: str | Path) -> DealHistory:
    """The deal history of the export folder of CRM `kind` (one of CRMS)."""
    return convert_export(kind, path).history
