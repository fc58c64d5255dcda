"""One base exception with specific subclasses; each maps to one HTTP status where it can surface."""

from __future__ import annotations


class ShipyardError(Exception):
    """Base of every error Shipyard raises on purpose."""

    http_status = 500

    def __init__(self, message: str, *args: object) -> None:
        # Pass every argument up so the exception survives pickling across Ray processes.
        super().__init__(message, *args)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ShipyardError):
    """A config file or override is malformed; the message names the key and what is accepted."""

    http_status = 400


class DataValidationError(ShipyardError):
    """The data does not fit the config (missing column, one class, empty, no files ...)."""

    http_status = 422


class InvalidInput(ShipyardError):
    """A request's record does not match the model's input schema. `field` names the feature
    whose value had the wrong type, when that was the problem (drift counts type errors)."""

    http_status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.field = field


class ModelNotFound(ShipyardError):
    """No registered model or version under that name, number or alias."""

    http_status = 404


class ArtifactError(ShipyardError):
    """A model artifact is missing, corrupt (checksum mismatch) or fails export parity."""

    http_status = 500
