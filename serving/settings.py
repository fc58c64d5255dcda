"""The one settings object every deployment of an app is built with.

`serving.app.build_app` validates the variants file, pins every alias to a version number and
decides where state goes; each deployment (router, variants, drift actors, experiment store,
retrain coordinator) then takes this one object and reads what it needs. Defaults live only in
the config models (`shipyard.config.serving`), never again in a constructor.
"""

from __future__ import annotations

from pydantic import Field

from shipyard.config.base import Strict
from shipyard.config.serving import ServingConfig, Variant


class AppSettings(Strict):
    config: ServingConfig = Field(description="The validated variants file.")
    versions: dict[str, int] = Field(
        description="Variant -> registered version number (aliases pinned when the app was built)."
    )
    tracking_uri: str | None = Field(None, description="MLflow tracking store of the registry.")
    state_uri: str = Field(description="Where this app's serving state lives (path or URI).")
    review_dir: str = Field(
        description="Local folder of the review queue (a CSV a person edits): under state_uri "
        "when that is a local path, else under $SHIPYARD_HOME/serving/<model>."
    )
    events_path: str = Field(
        description="The event log: a JSON-lines file, or an object-store folder (an object "
        "per event)."
    )

    @property
    def model(self) -> str:
        return self.config.model

    def variant(self, name: str) -> Variant:
        return self.config.variant(name)
