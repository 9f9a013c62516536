"""The Flower ServerApp (Message API): unpack the run config into the typed config and hand
the Grid to :func:`server.federation.run_federation`."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from shared_model.config import FederationAppConfig
from shared_model.run_config import unflatten_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation the run config describes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_federation(grid, unflatten_config(dict(context.run_config), FederationAppConfig), run_id=context.run_id)
