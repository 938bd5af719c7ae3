"""Which metric points say what about a host's TCP connections, and which host. Pure.

Recognised (``classify``), with what each gives:

- ``system.network.connections`` (OpenTelemetry Collector hostmetrics receiver, Python
  system-metrics instrumentation): ``protocol=tcp``, ``state`` in any case (``TIME_WAIT``,
  ``time_wait``, ``TIME-WAIT``): state ``TIME_WAIT`` is the TIME_WAIT count, ``ESTABLISHED``
  the established count. Points of one timestamp that differ in other attributes (address
  family, a per-process or per-destination breakdown) are summed; a destination attribute
  (``server.address``, ``net.peer.name``, ``network.peer.address``) is kept for attribution.
- ``node_sockstat_TCP_tw`` (node_exporter through the Collector's prometheus receiver):
  TIME_WAIT; ``node_netstat_Tcp_CurrEstab``: established; ``node_netstat_Tcp_ActiveOpens``:
  the cumulative count of connections this host opened (its rate is the open rate).
- ``node_sysctl_net_ipv4_ip_local_port_range`` (node_exporter's sysctl collector, one point per
  bound, labelled ``index`` 0/1 or ``value`` low/high): the ephemeral port range.

Host identity (``host_of``): ``host.name``; for a target scraped by the prometheus receiver,
which sets no ``host.name``, the scraped address (``server.address``, else the host part of
``service.instance.id``). Set ``host.name`` in the Collector (resource processor) where the scrape
address is not the name the host's services report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.records import Resource

TIME_WAIT, ESTABLISHED, OPENS, PORT_LOW, PORT_HIGH = "tw", "est", "opens", "plo", "phi"
LINUX_PORT_RANGE = (32768, 60999)  # net.ipv4.ip_local_port_range default: 28,232 ports
TIME_WAIT_S = 60.0  # Linux TCP_TIMEWAIT_LEN: fixed at compile time, not a sysctl

HOSTMETRICS = "system.network.connections"
NODE_TW, NODE_ESTAB, NODE_OPENS = (
    "node_sockstat_TCP_tw", "node_netstat_Tcp_CurrEstab", "node_netstat_Tcp_ActiveOpens",
)
NODE_PORTS = "node_sysctl_net_ipv4_ip_local_port_range"
#: Every metric this module reads: the router sends them by host, not by emitter.
HOST_METRICS = frozenset({HOSTMETRICS, NODE_TW, NODE_ESTAB, NODE_OPENS, NODE_PORTS})
DESTINATION_ATTRS = ("server.address", "net.peer.name", "network.peer.address", "peer.service")


def _state(value: Any) -> str:
    return str(value).upper().replace("-", "_")


def classify(name: str, attrs: Mapping[str, Any]) -> str | None:
    """The role of one point (``TIME_WAIT``, ``ESTABLISHED``, ``OPENS``, ``PORT_LOW`` or
    ``PORT_HIGH``), or None if it says nothing this detector uses.

    >>> classify("system.network.connections", {"protocol": "tcp", "state": "time_wait"})
    'tw'
    >>> classify("system.network.connections", {"protocol": "udp", "state": "TIME_WAIT"})
    >>> classify("node_sysctl_net_ipv4_ip_local_port_range", {"value": "high"})
    'phi'
    """
    if name == HOSTMETRICS:
        if str(attrs.get("protocol", "tcp")).lower() != "tcp":
            return None
        state = _state(attrs.get("state", ""))
        if state == "TIME_WAIT":
            return TIME_WAIT
        return ESTABLISHED if state == "ESTABLISHED" else None
    if name == NODE_TW:
        return TIME_WAIT
    if name == NODE_ESTAB:
        return ESTABLISHED
    if name == NODE_OPENS:
        return OPENS
    if name == NODE_PORTS:
        bound = str(attrs.get("index", attrs.get("value", ""))).lower()
        return PORT_LOW if bound in ("0", "low") else PORT_HIGH if bound in ("1", "high") else None
    return None


def destination(attrs: Mapping[str, Any]) -> str:
    """The peer a connection or client call goes to, from the usual attributes ("" if none)."""
    for key in DESTINATION_ATTRS:
        value = attrs.get(key)
        if value:
            return str(value)
    return ""


def host_of(resource: Resource) -> str:
    """The host a resource runs on ("" if unknown); see the module docstring."""
    if resource.host:
        return resource.host
    attrs = resource.attrs
    node = attrs.get("k8s.node.name") or attrs.get("server.address")
    if node:
        return str(node)
    instance = resource.instance  # "host:port" of a scrape target
    if instance.count(":") == 1 and "/" not in instance:
        return instance.rsplit(":", 1)[0]
    return ""


def host_key(host: str) -> str:
    """Routing key of a host's connection metrics and of the client calls made from it."""
    return f"host|{host}"


def parse_port_ranges(text: str) -> dict[str, int]:
    """``PORT_RANGES``: ``"32768-60999"`` or ``"node-7=1024-65535,*=32768-60999"`` -> number of
    ephemeral ports per host (``*``: every other host). Raises ValueError with the fix.

    >>> parse_port_ranges("node-7=1024-65535,*=32768-60999")
    {'node-7': 64512, '*': 28232}
    """
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        host, sep, rng = part.rpartition("=")
        host = host.strip() if sep else "*"
        lo, dash, hi = rng.strip().partition("-")
        try:
            low, high = int(lo), int(hi)
        except ValueError:
            low, high = 0, -1
        if not dash or not 1 <= low <= high <= 65535:
            raise ValueError(
                f"port range {part!r} must look like 32768-60999 (low-high, 1..65535), "
                "optionally prefixed by host= (as net.ipv4.ip_local_port_range)"
            )
        out[host] = high - low + 1
    return out
