"""The Flask app factory: one blueprint per protocol surface, backends
passed in, nothing connected at import time."""

from __future__ import annotations

import time

from flask import Flask, g

from ..config import Config
from ..driver import Driver
from ..ipam import Ipam
from ..release import Releaser
from . import admin, errors, ipam, network, plugin

MAX_BODY = 1 << 20   # Docker's requests are a few hundred bytes; refuse anything over 1 MiB


def create_app(cfg: Config, driver: Driver, ipam_backend: Ipam, releaser: Releaser | None = None,
               metrics=None) -> Flask:
    app = Flask("netplugin")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["netplugin"] = {"cfg": cfg, "driver": driver, "ipam": ipam_backend, "releaser": releaser,
                                   "metrics": metrics}
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
