"""Plugin discovery."""

from flask import Blueprint

from .wire import backend, protocol, reply

bp = Blueprint("plugin", __name__)


@bp.post("/Plugin.Activate")
@protocol
def activate(body: dict) -> dict:
    """``{}`` -> ``{"Implements": ["NetworkDriver", "IpamDriver"]}``"""
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


@bp.get("/health")
def health_check():
    """GET -> ``{"healthy": true, "etcd": {"ok": true, "ms": 1.1}, "ovsdb": {"ok": true, "ms": 0.4}}``,
    status 200, or 503 when either is unreachable."""
    report = backend("health")()
    return reply(report, 200 if report["healthy"] else 503)
