"""Finding one endpoint from what an operator types (an id prefix, an IP or a
container on this host), for every netctl command that takes one."""

from __future__ import annotations

from ..errors import InvalidRequest, NotFound


def find_endpoint(ctx, ref: str):
    eps = ctx.store.list_endpoints()
    matches = [e for e in eps if e.id.startswith(ref.lower())] if len(ref) >= 4 else []
    matches = matches or [e for e in eps if e.ip == ref]
    if not matches:
        from ..docker_api import DockerNames
        ids = DockerNames(ctx.cfg.docker_url, ctx.cfg.docker_timeout).container_endpoints(ref)
        matches = [e for e in eps if e.id in ids]
    if not matches:
        raise NotFound(f"no endpoint matches {ref!r} (by id prefix, IP or container on this host): "
                       "see 'netctl endpoint ls'")
    if len(matches) > 1:
        raise InvalidRequest(f"{ref!r} matches {len(matches)} endpoints: give more of the id, "
                             "or --network with --ip")
    return matches[0]
