"""The one exception tree of omniopd.

Every error a user can meet derives from `OmniOPDError`, and every message says what to do
next. The CLI catches `OmniOPDError`, prints its message and exits 2 — no traceback for a
mistake the user can fix. Anything else is a bug and keeps its traceback.

This module imports nothing heavy: `providers/`, `cache/` and `scheduler/` import it.
"""

from __future__ import annotations


class OmniOPDError(Exception):
    """Root of every error omniopd raises on purpose."""


# --- configuration and input -------------------------------------------------------------
class ConfigError(OmniOPDError, ValueError):
    """A config key, flag or value is unknown or out of range; the message names the key."""


class DataError(OmniOPDError, ValueError):
    """A dataset row is malformed; the message names the file and line."""


class ModelNotFoundError(OmniOPDError, FileNotFoundError):
    """A model or packaged asset is missing; the message names the install command."""


# --- teachers ----------------------------------------------------------------------------
class TeacherError(OmniOPDError):
    """A teacher could not produce samples."""


class TeacherUnavailableError(TeacherError):
    """Transport failures outlasted the retry deadline (network down, server 5xx, timeouts)."""


class TeacherAuthError(TeacherError):
    """The API key is missing or rejected (401/403). Never retried; triggers fallback."""


class TeacherQuotaError(TeacherError):
    """The account's quota or spend limit is exhausted (a 429 that waiting will not fix)."""


class TeacherCapabilityError(TeacherError):
    """The model rejected the request's shape (a 400: prefill, sampling params, ...)."""


class TeacherResponseError(TeacherError):
    """The server answered with something unparseable (malformed JSON, missing fields)."""


class TeacherAccessError(TeacherError):
    """The method needs teacher access (log-probabilities, same tokenizer) this teacher lacks."""


class BudgetExceededError(TeacherError):
    """`--max-teacher-usd` was reached; the run stops cleanly and can be resumed."""


# --- cache and replay ----------------------------------------------------------------------
class CacheError(OmniOPDError):
    """The sample cache cannot be used as asked; existing data is left intact."""


class CacheCorruptError(CacheError):
    """The cache file fails SQLite's integrity check or is not a database."""


class CacheSchemaError(CacheError):
    """The cache was written by a newer omniopd (schema version ahead of this code)."""


class CacheReadOnlyError(CacheError):
    """The cache path cannot be written; use `--cache-mode read-only` or another `--cache`."""


class CacheFullError(CacheError):
    """The disk (or the file-size limit) is full; the write was rolled back, nothing stored is lost."""


class CacheMissError(CacheError):
    """Replay or read-only mode needed a sample that is not stored."""


class ReplayError(OmniOPDError):
    """A recorded run cannot be replayed (missing episodes, incompatible student)."""


class ReportError(OmniOPDError):
    """A run cannot be read for `omniopd report/inspect/export`, or an export cannot be written or pushed."""
