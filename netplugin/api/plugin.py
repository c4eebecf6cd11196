"""Plugin discovery."""

from flask import Blueprint

from .wire import protocol

bp = Blueprint("plugin", __name__)


@bp.post("/Plugin.Activate")
@protocol
def activate(body: dict) -> dict:
    """``{}`` -> ``{"Implements": ["NetworkDriver", "IpamDriver"]}``"""
    return {"Implements": ["NetworkDriver", "IpamDriver"]}
