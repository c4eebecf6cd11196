"""How netplugin and drctl reach etcd, checked before anything connects.

TLS files and credentials that only work together are refused when given
apart, and nothing that should be protected goes out in clear. A setting
that would be ignored is an error, never a silent downgrade:

* ``etcd_cert`` without ``etcd_key``, ``etcd_user`` without
  ``etcd_password``, or the other way round;
* one scheme for every endpoint: a mix of ``http://`` and ``https://``
  would send some calls, password included, in clear;
* ``etcd_cacert``, ``etcd_cert`` or ``etcd_key`` with ``http://``
  endpoints: the files would be ignored;
* ``etcd_cert`` and ``etcd_key`` without ``etcd_cacert``: refused, since
  the server would then be checked silently against the system's CA store,
  not the private CA that a fleet with client certificates uses;
  ``https://`` alone (no client certificate) does use the system store, by
  choice;
* a password over ``http://``: refused, unless
  ``etcd_allow_plaintext_password`` is set AND every endpoint is on the
  loopback interface (a test cluster on this machine).

Config.validate and EtcdKV both call check(); messages name the settings
and say what to do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from .errors import InvalidRequest


def is_loopback(url: str) -> bool:
    """The endpoint's host is 127.0.0.0/8, ::1 or localhost."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(endpoints: Sequence[str], cacert: str | None = None, cert: str | None = None,
          key: str | None = None, user: str | None = None, password: str | None = None,
          allow_plaintext_password: bool = False) -> None:
    """Raise InvalidRequest for the first combination that cannot be honoured as written."""
    if bool(cert) != bool(key):
        raise InvalidRequest("etcd_cert and etcd_key go together: give both or neither "
                             f"({'etcd_key' if cert else 'etcd_cert'} is missing)")
    if bool(user) != bool(password):
        raise InvalidRequest("etcd_user and etcd_password go together: give both or neither "
                             f"({'etcd_password' if user else 'etcd_user'} is missing)")
    schemes = {urlsplit(url).scheme for url in endpoints}
    if len(schemes) > 1:
        raise InvalidRequest("etcd_endpoints mixes http:// and https:// endpoints: calls to the http:// ones "
                             "would go in clear; give every endpoint the same scheme (https:// with TLS)")
    plain = schemes == {"http"}
    given = [name for name, value in (("etcd_cacert", cacert), ("etcd_cert", cert), ("etcd_key", key)) if value]
    if given and plain:
        raise InvalidRequest(f"{', '.join(given)} set, but etcd_endpoints are http://: the TLS files would be "
                             "ignored and every call sent in clear; use https:// endpoints, or remove the "
                             "TLS settings")
    if cert and not cacert:
        raise InvalidRequest("etcd_cert and etcd_key (TLS client authentication) are set without etcd_cacert: "
                             "the etcd servers would be checked against the system's CA store instead of "
                             "your CA; set etcd_cacert to the CA that signed the etcd servers' certificates")
    if password and plain:
        everywhere_local = all(is_loopback(url) for url in endpoints)
        if not allow_plaintext_password:
            raise InvalidRequest("etcd_password would be sent in clear over http:// endpoints: use https:// "
                                 "endpoints with etcd_cacert; only for a test cluster on this machine's "
                                 "loopback, set etcd_allow_plaintext_password = true")
        if not everywhere_local:
            remote = [url for url in endpoints if not is_loopback(url)]
            raise InvalidRequest("etcd_allow_plaintext_password covers loopback endpoints only, but "
                                 f"{', '.join(remote)} is not on loopback: the password would cross the "
                                 "network in clear; use https:// endpoints with etcd_cacert")
