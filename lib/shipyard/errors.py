"""One base exception with a subclass per outcome. Which HTTP status each one becomes is decided
once, at the serving edge (`serving.edge.STATUS`); a job maps them to exit codes
(`shipyard.contract.exit_code`)."""

from __future__ import annotations


class ShipyardError(Exception):
    """Base of every error Shipyard raises on purpose."""

    def __init__(self, message: str, *args: object) -> None:
        # Pass every argument up so the exception survives pickling across Ray processes.
        super().__init__(message, *args)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ShipyardError):
    """A config file or override is malformed; the message names the key and what is accepted."""


class DataValidationError(ShipyardError):
    """The data does not fit the config (missing column, one class, empty, no files ...)."""


class ArtifactError(ShipyardError):
    """A model artifact is missing, corrupt (checksum mismatch) or fails export parity."""


# --- what a client of the serving app can cause ------------------------------------------------
class InvalidInput(ShipyardError):
    """A request the client can correct: it names what is wrong and what would be accepted.
    `field` names the feature whose value had the wrong type, when that was the problem (drift
    counts type errors)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.field = field


class InvalidField(InvalidInput):
    """A field of a request body holds a value the route cannot take (HTTP 422)."""


class InvalidRecord(InvalidField):
    """A request's record does not match the model's input schema."""


class NotFound(ShipyardError):
    """No such variant, request, route or resource."""


class ModelNotFound(NotFound):
    """No registered model or version under that name, number or alias."""


class Conflict(ShipyardError):
    """The request contradicts the current state (e.g. an outcome given twice)."""


class PayloadTooLarge(InvalidInput):
    """A body or a batch over the configured limit."""


class Unauthorized(ShipyardError):
    """An admin route called without credentials."""


class Forbidden(ShipyardError):
    """An admin route called with the wrong credentials."""


# --- what the server side can cause ------------------------------------------------------------
class Unavailable(ShipyardError):
    """A collaborator (a variant, the experiment store, a drift actor) cannot answer now;
    retrying shortly may succeed."""


class StorageError(Unavailable):
    """State storage (`state_uri`: a disk or an object store) refused a read or a write; what the
    call would have changed was not changed, so retrying it is safe."""


class Fenced(StorageError):
    """Another writer appended to the same journal (a second store replica alive at once: a
    rolling update, a partitioned node). Storage keeps the other's entry; this writer stops
    writing, since its state is behind storage's, and answers 503 until it is replaced."""


class StaleState(Unavailable):
    """Storage holds older state than this app is known to have written (a node-local
    `state_uri` read on another node): refused, rather than resuming from the past."""


class NotLoaded(Unavailable):
    """A variant could not load its version (corrupt or missing bundle, registry down); the
    message says why. The router takes the variant out of routing until it loads."""


class Unresponsive(Unavailable):
    """A treatment did not answer within `limits.fallback_after_s` (its node lost, its replica
    hung): control answers the request, and the variant leaves routing until it answers the
    router's health probe again."""


class UpstreamTimeout(ShipyardError):
    """A variant did not answer within `limits.timeout_s`."""


class DeployFailed(ShipyardError):
    """A redeploy was refused; live traffic is unchanged."""
