"""Boundaries to the host's datapath: kernel links (pyroute2), Open vSwitch
(ovsdbapp) and, in later parts, OpenFlow."""
