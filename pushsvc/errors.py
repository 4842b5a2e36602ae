"""HTTP errors as small named exceptions, turned into JSON answers in one place (`app.py`)."""

from __future__ import annotations


class ApiError(Exception):
    status = 400

    def __init__(
        self, code: str, detail: str, status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}
