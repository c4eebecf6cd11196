"""netplugin: a Docker network and IPAM driver on Open vSwitch with global pools in etcd."""

__version__ = "0.1.0"
