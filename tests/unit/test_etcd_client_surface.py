"""netplugin/kv.py drives etcd-sdk-python (module pyetcd, 0.0.x) partly through
names the library does not promise to keep: its watcher's internals, its
client's stub cache and request builders. This test names every one of them,
so an upgrade that renames or drops one fails here, loudly and at once, instead
of as a hang or a silent loss of watch events in production. setup.cfg bounds
the version to the one tested (etcd-sdk-python<0.0.8)."""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import version

import pyetcd
from pyetcd import events, exceptions, utils, watch
from pyetcd.etcdrpc import WatchStub

client = importlib.import_module("pyetcd.client")      # pyetcd.client is also the name of a function

# Instance attributes kv.py reads or sets, by class: they must be assigned in the class's source.
INSTANCE_ATTRIBUTES = {
    watch.Watcher: ("_watch_stub", "_credentials", "_metadata", "_lock", "_callback_thread", "_new_watch_cond",
                    "_stopping", "_new_watch", "_request_queue"),
    client.MultiEndpointEtcd3Client: ("_stubs",),
}
PROPERTIES = {client.MultiEndpointEtcd3Client: ("channel",)}
METHODS = {
    watch.Watcher: ("_create_watch_request", "_run", "_handle_response", "add_callback", "cancel", "close"),
    client.MultiEndpointEtcd3Client: ("_clear_old_stubs", "_build_get_range_request", "_manage_grpc_errors",
                                      "get_watcher", "transaction", "lease"),
}
FUNCTIONS = {watch: ("_safe_callback", "_new_request_iter"), utils: ("prefix_range_end", "to_bytes")}


def test_the_version_is_the_one_tested():
    assert version("etcd-sdk-python") == "0.0.7", "kv.py's use of pyetcd's internals was checked against 0.0.7 only"


def test_private_methods_and_functions_kv_uses_are_there():
    missing = [f"{cls.__name__}.{name}" for cls, names in METHODS.items() for name in names
               if not callable(getattr(cls, name, None))]
    missing += [f"{mod.__name__}.{name}" for mod, names in FUNCTIONS.items() for name in names
                if not callable(getattr(mod, name, None))]
    assert missing == [], f"pyetcd no longer has {missing}: netplugin/kv.py must follow it"


def test_instance_attributes_kv_uses_are_assigned():
    missing = []
    for cls, names in INSTANCE_ATTRIBUTES.items():
        source = inspect.getsource(cls)
        missing += [f"{cls.__name__}.{name}" for name in names if not re.search(rf"self\.{name}\s*=", source)]
    missing += [f"{cls.__name__}.{name}" for cls, names in PROPERTIES.items() for name in names
                if not isinstance(inspect.getattr_static(cls, name, None), property)]
    assert missing == [], f"pyetcd no longer sets {missing}: netplugin/kv.py must follow it"


def test_public_names_kv_uses_are_there():
    assert issubclass(pyetcd.MultiEndpointEtcd3Client, object) and callable(pyetcd.Endpoint)
    assert callable(WatchStub) and inspect.isclass(watch._NewWatch) and inspect.isclass(events.DeleteEvent)
    for name in ("ConnectionFailedError", "ConnectionTimeoutError", "InternalServerError", "NoServerAvailableError",
                 "RevisionCompactedError", "WatchTimedOut"):
        assert issubclass(getattr(exceptions, name), Exception), name
    signature = inspect.signature(watch.Watcher._create_watch_request)
    assert {"key", "range_end", "start_revision"} <= signature.parameters.keys()
