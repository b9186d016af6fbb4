"""Which addresses a process tree listens on, read from /proc (Linux): for the rule that every
service the project starts listens on loopback only."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def _listening_sockets() -> dict[str, str]:
    """Socket inode -> "address:port" of every TCP socket in LISTEN state."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # LISTEN
                continue
            hex_address, hex_port = local.split(":")
            raw = bytes.fromhex(hex_address)
            # The kernel writes each 32-bit word of the address in host (little-endian) order.
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            sockets[inode] = f"{ipaddress.ip_address(packed)}:{int(hex_port, 16)}"
    return sockets


def _process_group(leader: int) -> list[int]:
    """Every process whose process group is `leader`'s (services start in a session of their own)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == leader:
                members.append(int(entry))
    return members


def listening_addresses(leader: int) -> set[str]:
    """The "address:port" pairs every process of `leader`'s group listens on."""
    sockets = _listening_sockets()
    found = set()
    for pid in _process_group(leader):
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in sockets:
                found.add(sockets[target[8:-1]])
    return found


def is_loopback(address: str) -> bool:
    host = ipaddress.ip_address(address.rsplit(":", 1)[0])
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped:
        host = host.ipv4_mapped
    return host.is_loopback


def open_beyond_loopback(service) -> list[str]:
    """A running service's listening addresses that break the loopback rule: not loopback, and
    not among the ports the service declares it cannot keep on loopback (`all_interfaces_ports`)."""
    addresses = listening_addresses(service.pid())
    assert addresses, f"{service.name} listens nowhere"
    allowed = set(service.all_interfaces_ports())
    return sorted(address for address in addresses if not is_loopback(address) and int(address.rsplit(":", 1)[1]) not in allowed)
