"""One exception hierarchy for the core. Every message says what to do next."""

from __future__ import annotations


class DlpipeError(Exception):
    """Base class of every error raised by dlpipe."""


class ConfigError(DlpipeError, ValueError):
    """A configuration value is invalid. Deterministic: retrying will not help."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field, self.value, self.fix = field, value, fix
        super().__init__(f"invalid {field}={value!r}: {fix}")


class NotCommittedError(DlpipeError):
    """A reader was pointed at data that no committed manifest vouches for."""


class IntegrityError(DlpipeError):
    """Stored bytes do not match the SHA-256 recorded when they were committed."""


class CommitConflict(DlpipeError):
    """Another attempt committed the same thing first (lost a create-only race)."""


class GateFailed(DlpipeError):
    """A data or model gate rejected its input. Deterministic: do not retry."""

    def __init__(self, gate: str, failures: list[str]) -> None:
        self.gate, self.failures = gate, failures
        lines = "\n".join(f"  - {f}" for f in failures)
        super().__init__(f"{gate} failed ({len(failures)} check(s)):\n{lines}")


class SubprocessFailed(DlpipeError):
    """An external tool (spark-submit, horovodrun) exited non-zero; carries its output tail."""

    def __init__(self, message: str, *, headline: str = "", tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.headline = headline or message.splitlines()[0]
        self.tail = tail or []


class AliasConflict(CommitConflict):
    """An alias moved between reading it and writing it (lost a compare-and-swap)."""


class UnsafeArtifactError(IntegrityError):
    """An artifact would need pickle (arbitrary code execution) to load; it is refused."""
