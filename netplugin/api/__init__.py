"""The Flask app factory: one blueprint per protocol surface, the
components passed in, nothing connected at import time."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flask import Flask, g

from . import admin, errors, ipam, network, plugin

if TYPE_CHECKING:
    from ..wiring import Components

MAX_BODY = 1 << 20   # Docker's requests are a few hundred bytes; refuse anything over 1 MiB


def create_app(parts: Components) -> Flask:
    """The app over the components built by ``wiring``: handlers reach the
    network and endpoint use cases, IPAM, the releaser, the health probe and
    metrics through ``wire.backend``."""
    app = Flask("netplugin")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["netplugin"] = {"cfg": parts.cfg, "networks": parts.networks, "endpoints": parts.endpoints,
                                   "ipam": parts.ipam, "releaser": parts.releaser, "health": parts.health,
                                   "metrics": parts.metrics}
    app.register_blueprint(plugin.bp)
    app.register_blueprint(network.bp)
    app.register_blueprint(ipam.bp)
    app.register_blueprint(admin.bp)
    errors.register(app)

    @app.before_request
    def start_clock():
        g.started = time.monotonic()
        g.body = {}
    return app
