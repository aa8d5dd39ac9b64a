"""The project's own error type: every bad input ends here, naming file, field, value and fix."""

from __future__ import annotations


_UNSET = object()


class GpoError(Exception):
    """A user-facing error. The CLI prints it without a traceback and exits with code 2."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 value: object = _UNSET, fix: str | None = None) -> None:
        self.file, self.field, self.value, self.fix = file, field, value, fix
        parts = [message]
        if file:
            parts.append(f"file: {file}")
        if field:
            parts.append(f"field: {field}")
        if value is not _UNSET:
            parts.append(f"value: {value!r}")
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__("\n  ".join(parts))
