"""Domain errors. Each carries the HTTP status the API answers with.

Every message says what was wrong and what to do about it: Docker shows the
text to the user as it is, and an empty message is useless to an operator.
"""


class NetpluginError(Exception):
    """Base of every error the plugin reports to a caller."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(NetpluginError):
    """The request itself is malformed or asks for something impossible."""

    status = 400


class NotFound(NetpluginError):
    """A network, endpoint, pool or address named in the request does not exist."""

    status = 404


class Conflict(NetpluginError):
    """The request clashes with existing state (a taken VLAN, subnet or address)."""

    status = 409


class PoolExhausted(Conflict):
    """No free address is left in the pool."""


class StoreUnavailable(NetpluginError):
    """etcd cannot be reached or did not answer in time."""

    status = 503


class StoreFull(StoreUnavailable):
    """etcd raised its space alarm (NOSPACE): it refuses writes until an operator
    frees space and disarms the alarm; reads still work."""


class HistoryCompacted(StoreUnavailable):
    """A watch asked for changes etcd has compacted away: read everything again."""

    def __init__(self, message: str, compacted_revision: int = 0):
        super().__init__(message)
        self.compacted_revision = compacted_revision


class DataplaneUnavailable(NetpluginError):
    """Open vSwitch or the kernel cannot be reached."""

    status = 503


class DataplaneError(NetpluginError):
    """Open vSwitch or the kernel refused an operation."""

    status = 500


class DeadlineExceeded(NetpluginError):
    """A call ran past its deadline and was rolled back."""

    status = 504
