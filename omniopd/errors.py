"""The one exception tree of omniopd.

Every error a user can meet derives from `OmniOPDError`, and every message says what to do
next. The CLI catches `OmniOPDError`, prints its message and exits 2 — no traceback for a
mistake the user can fix. Anything else is a bug and keeps its traceback.

    OmniOPDError
    ├── ConfigError (ValueError)            a key, flag or value is unknown or out of range
    ├── DataError (ValueError)              a dataset row is malformed (file and line named)
    ├── ModelNotFoundError (FileNotFoundError)
    ├── TeacherError                        carries provider, status, retry_after_s, request_id
    │   ├── TeacherUnavailableError         transport failures outlasted the retry deadline
    │   ├── TeacherAuthError                401/403 or no key: never retried, triggers fallback
    │   ├── TeacherQuotaError               402, or a 429 that waiting will not fix
    │   ├── TeacherCapabilityError          other 4xx: the model rejected the request's shape
    │   ├── TeacherResponseError            unparseable or invalid answer (empty, too long, ...)
    │   │   └── RepairFormatError           a first-error repair answer broke its format (what, step)
    │   ├── TeacherAccessError              the method needs logprobs/tokenizer this teacher lacks
    │   └── BudgetExceededError             --max-teacher-usd reached (spent, cap, needed)
    ├── CacheError
    │   ├── CacheCorruptError               not SQLite, truncated, damaged, not an omniopd cache
    │   ├── CacheSchemaError                schema newer (or older, read-only) than this code
    │   ├── CacheReadOnlyError              the path cannot be written
    │   ├── CacheFullError                  disk or file-size limit full; the write rolled back
    │   └── CacheMissError                  replay/read-only needed a sample that is not stored
    └── ReplayError                         a recorded run cannot be replayed

Errors carry their facts as attributes (`TeacherError.provider`, `.status`, `.retry_after_s`,
`.request_id`, `.batch_id`; `BudgetExceededError.spent_usd`, `.cap_usd`, `.needed_usd`), not only in the
message, and every error pickles with them (they cross process boundaries in multi-process
runs and in `concurrent.futures`): the facts are keyword arguments with defaults and live in
`__dict__`, which `BaseException.__reduce__` carries.

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
    """A teacher could not produce samples.

    `provider` (e.g. "anthropic"), `status` (the HTTP status, None for transport failures),
    `retry_after_s` (the server's wait hint), `request_id` (the provider's id of the failed
    request, for a support ticket) and `batch_id` (the provider's batch, for `omniopd collect
    --batch`) are None when unknown.
    """

    def __init__(self, message: str = "", *, provider: str | None = None, status: int | None = None,
                 retry_after_s: float | None = None, request_id: str | None = None, batch_id: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after_s = retry_after_s
        self.request_id = request_id
        self.batch_id = batch_id

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def facts(self) -> dict[str, object]:
        """The error's facts, for logs and metrics (never a key: messages are redacted at the source)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


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


class RepairFormatError(TeacherResponseError):
    """A first-error repair answer (`providers/repair.py`) broke the requested format.

    Per sample, never per run: the caller drops the repair (and, in `--sft-repair`, buys a whole
    solution instead). `what` names the check that failed (`header`: no `STEP <k>` first line;
    `step`: k outside the student's lines; `empty`: no corrected text; `unchanged`: the
    "correction" repeats the student's own lines), `step` the k the teacher named (None when it
    named none), `lines` how many lines the student's solution had.
    """

    def __init__(self, message: str = "", *, what: str | None = None, step: int | None = None,
                 lines: int | None = None, **facts) -> None:
        super().__init__(message, **facts)
        self.what = what
        self.step = step
        self.lines = lines


class TeacherAccessError(TeacherError):
    """The method needs teacher access (log-probabilities, same tokenizer) this teacher lacks."""


class BudgetExceededError(TeacherError):
    """`--max-teacher-usd` was reached; the run stops cleanly and can be resumed.

    `spent_usd` is what the run's ledger holds as spent (plus reserved by requests in flight),
    `cap_usd` the cap, `needed_usd` the worst-case cost of the request that was refused.
    """

    def __init__(self, message: str = "", *, spent_usd: float | None = None, cap_usd: float | None = None,
                 needed_usd: float | None = None, **facts) -> None:
        super().__init__(message, **facts)
        self.spent_usd = spent_usd
        self.cap_usd = cap_usd
        self.needed_usd = needed_usd


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
