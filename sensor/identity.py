"""Passive host identity: DHCP, ARP, mDNS and LLMNR turned into ``Identity`` records
(kaspwatch.identity).

DHCP: a client's DISCOVER/REQUEST/INFORM says its MAC, host name, FQDN and vendor class;
the server's ACK binds an address to that MAC (``yiaddr``, or ``ciaddr`` on a renewal).
The ACK is the record; the names come from the client's last message (the server rarely
echoes them). A REQUEST whose ACK this sensor cannot see (asymmetric taps) does not bind:
only an ACK does. ARP: a sender's (address, MAC) pair; a record only when the pair is new
or changed, so ARP chatter costs nothing. Every binding is re-published after
``refresh_s`` of capture time, so a compacted topic keeps a recent ``ts``.

Both tables are bounded (oldest out first) and count their evictions.
"""

from __future__ import annotations

import socket
import struct
from typing import Final, NamedTuple

from kaspwatch.event import format_ts
from kaspwatch.identity import Identity, clean_text, normalize_mac
from sensor.decode import DecodeError
from sensor.decode.dhcp import ACK, DISCOVER, INFORM, REQUEST, decode_arp, decode_dhcp
from sensor.decode.dhcpv6 import CLIENT_MESSAGES, REPLY, decode_dhcpv6, decode_ndp
from sensor.decode.dns import announced
from sensor.decode.kerberos import decode_as_req
from sensor.decode.netbios import decode_nbns

MAX_CLIENTS: Final = 16_384  # DHCP clients whose names wait for their ACK
MAX_BINDINGS: Final = 65_536  # address -> last published binding
REFRESH_S: Final = 3600.0
_ZERO: Final = b"\0\0\0\0"


def _addr(src: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(src) == 4 else socket.AF_INET6, src)


class _Client(NamedTuple):
    hostname: str
    fqdn: str
    vendor_class: str


class _Bound(NamedTuple):
    key: tuple[str, str, str, str]  # (mac, hostname, fqdn, vendor_class): what a change is
    first_ns: int
    published_ns: int


class IdentityWatch:
    def __init__(
        self,
        sensor: str,
        max_clients: int = MAX_CLIENTS,
        max_bindings: int = MAX_BINDINGS,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.sensor = sensor
        self.clients: dict[bytes, _Client] = {}
        self.bindings: dict[str, _Bound] = {}
        self.max_clients, self.max_bindings = max_clients, max_bindings
        self.refresh_ns = int(refresh_s * 1e9)
        self.clients_evicted = 0
        self.bindings_evicted = 0
        self.pending: list[Identity] = []

    def drain(self) -> list[Identity]:
        out, self.pending = self.pending, []
        return out

    def peer_dhcp(
        self, ts_ns: int, mac: str, address: str = "", hostname: str = "", fqdn: str = "",
        lease_s: int | None = None,
    ) -> None:  # fmt: skip
        """A peer sensor's DHCP record (Suricata EVE ``dhcp``, Zeek ``dhcp.log``; ``mac``
        normalised): without ``address`` a client's message naming its MAC; with one, the
        binding the server granted (names from the record, else the client's last one)."""
        names = _Client(clean_text(hostname.encode()), clean_text(fqdn.encode()), "")
        key = bytes.fromhex(mac.replace(":", ""))
        if not address:
            if names.hostname or names.fqdn:
                self._remember(key, names)
            return
        if not (names.hostname or names.fqdn):
            names = self.clients.get(key) or names
        self._bind(address, mac, names, ts_ns, "dhcp", lease_s)

    def _remember(self, mac: bytes, names: _Client) -> None:
        self.clients.pop(mac, None)
        self.clients[mac] = names
        if len(self.clients) > self.max_clients:
            del self.clients[next(iter(self.clients))]
            self.clients_evicted += 1

    def dhcp(self, payload: bytes, ts_ns: int) -> None:
        """Read one DHCP message (DecodeError when malformed)."""
        msg = decode_dhcp(payload)
        if not msg.mac:
            return
        if msg.op == 1 and msg.msg_type in (DISCOVER, REQUEST, INFORM):
            names = _Client(clean_text(msg.hostname), clean_text(msg.fqdn.encode()),
                            clean_text(msg.vendor_class))  # fmt: skip
            self.clients.pop(msg.mac, None)
            self.clients[msg.mac] = names
            if len(self.clients) > self.max_clients:
                del self.clients[next(iter(self.clients))]
                self.clients_evicted += 1
            return
        if msg.op == 2 and msg.msg_type == ACK:
            addr = msg.yiaddr if msg.yiaddr != _ZERO else msg.ciaddr
            if addr == _ZERO:
                return  # an ACK to an INFORM binds nothing new
            client = self.clients.get(msg.mac) or _Client(clean_text(msg.hostname), "", "")
            self._bind(socket.inet_ntoa(addr), normalize_mac(msg.mac), client, ts_ns, "dhcp",
                       msg.lease_s)  # fmt: skip

    def frame(self, linktype: int, data: bytes, ts_ns: int) -> None:
        """Read an Ethernet frame that carried no TCP/UDP: ARP, or NDP naming its sender's own
        address and MAC (DecodeError if malformed)."""
        if linktype != 1:
            return
        arp = decode_arp(data)
        if arp is not None:
            if arp.sender_ip != _ZERO:
                self._pair(socket.inet_ntoa(arp.sender_ip), arp.sender_mac, ts_ns, "arp")
            return
        neighbour = decode_ndp(data)
        if neighbour is not None:
            self._pair(_addr(neighbour.address), neighbour.mac, ts_ns, "ndp")

    def _pair(self, addr: str, raw_mac: bytes, ts_ns: int, source: str) -> None:
        if raw_mac in (b"\0" * 6, b"\xff" * 6):
            return
        mac = normalize_mac(raw_mac)
        known = self.bindings.get(addr)
        if known is not None and known.key[0] in (mac, ""):
            names = _Client(*known.key[1:])  # ARP/NDP add no names: keep DHCP's (or mDNS's)
        else:
            names = _Client("", "", "")
        self._bind(addr, mac, names, ts_ns, source, None)

    def dhcpv6(self, payload: bytes, ts_ns: int) -> None:
        """Read one DHCPv6 message: a client's names wait, by DUID, for the server's REPLY
        that binds its IA addresses (DecodeError when malformed)."""
        msg = decode_dhcpv6(payload)
        if not msg.duid:
            return
        key = b"duid:" + msg.duid
        if msg.msg_type in CLIENT_MESSAGES:
            names = _Client("", clean_text(msg.fqdn.encode()), clean_text(msg.vendor_class))
            self.clients.pop(key, None)
            self.clients[key] = names
            if len(self.clients) > self.max_clients:
                del self.clients[next(iter(self.clients))]
                self.clients_evicted += 1
            return
        if msg.msg_type == REPLY:
            client = self.clients.get(key) or _Client("", clean_text(msg.fqdn.encode()), "")
            mac = normalize_mac(msg.mac) if msg.mac else ""
            for raw, valid_s in msg.addresses:
                if valid_s:  # a valid lifetime of 0: the address is given back
                    self._bind(_addr(raw), mac, client, ts_ns, "dhcpv6", valid_s)

    def announce(self, payload: bytes, sport: int, src: bytes, ts_ns: int) -> None:
        """An mDNS (5353) or LLMNR (5355) response naming its sender: the sender's address
        among the records of a name binds that name to it (no MAC: kept from DHCP or ARP
        when the name agrees). A malformed message is left to the DNS decoder."""
        try:
            records = announced(payload)
        except (DecodeError, IndexError, struct.error):
            return
        addr = socket.inet_ntop(socket.AF_INET if len(src) == 4 else socket.AF_INET6, src)
        for name, addrs in records.items():
            if addr not in addrs:
                continue  # a record about another host (a proxy, a sleep proxy): not proof
            host = name.removesuffix(".local") if sport == 5353 else name
            if not host or "." in host or "_" in host:
                continue
            known = self.bindings.get(addr)
            if known is not None and known.key[1].lower() == host.lower():
                return  # what DHCP said, in other letters: nothing new
            mac = known.key[0] if known is not None and not known.key[1] else ""
            source = "mdns" if sport == 5353 else "llmnr"
            self._bind(addr, mac, _Client(clean_text(host.encode()), "", ""), ts_ns, source, None)
            return

    def kerberos(self, payload: bytes, src: bytes, ts_ns: int, tcp: bool = False) -> None:
        """A Kerberos AS-REQ to port 88: a machine account's principal (``WS-NAME$``) names
        the sender; a user's principal names no machine (DecodeError when malformed)."""
        req = decode_as_req(payload, tcp)
        if req is None or len(req.name) != 1 or not req.name[0].endswith("$"):
            return
        host = req.name[0][:-1]
        if not host or "." in host:
            return
        self._named(_addr(src), clean_text(host.encode()), ts_ns, "kerberos")

    def netbios(self, payload: bytes, src: bytes, ts_ns: int) -> None:
        """A NetBIOS name registration, refresh or query response (UDP 137): a machine name
        bound to the sender's own address names it (DecodeError when malformed)."""
        for host, addr in decode_nbns(payload):
            if addr == src:  # a WINS server answering for another host: not proof
                self._named(_addr(src), clean_text(host.encode()), ts_ns, "netbios")
                return

    def _named(self, addr: str, host: str, ts_ns: int, source: str) -> None:
        """A name, without a MAC, for an address: the MAC known for it is kept when it has
        no name yet or the same one."""
        known = self.bindings.get(addr)
        if known is not None and known.key[1].lower() == host.lower():
            if ts_ns - known.published_ns < self.refresh_ns:
                return  # what is known already, in other letters: nothing new
            host = known.key[1]
        mac = (
            known.key[0] if known is not None and known.key[1].lower() in ("", host.lower()) else ""
        )
        self._bind(addr, mac, _Client(host, "", ""), ts_ns, source, None)

    def _bind(
        self, addr: str, mac: str, c: _Client, ts_ns: int, source: str, lease_s: int | None
    ) -> None:
        key = (mac, c.hostname, c.fqdn, c.vendor_class)
        known = self.bindings.get(addr)
        if known is not None and known.key == key:
            if source not in ("dhcp", "dhcpv6") and ts_ns - known.published_ns < self.refresh_ns:
                return  # nothing new
            first_ns = known.first_ns
        else:
            first_ns = ts_ns
        self.bindings.pop(addr, None)
        self.bindings[addr] = _Bound(key, first_ns, ts_ns)
        if len(self.bindings) > self.max_bindings:
            del self.bindings[next(iter(self.bindings))]
            self.bindings_evicted += 1
        self.pending.append(
            Identity(
                address=addr, ts=format_ts(ts_ns), sensor=self.sensor, source=source, mac=mac,
                hostname=c.hostname, fqdn=c.fqdn, vendor_class=c.vendor_class,
                first_seen=format_ts(first_ns), lease_s=lease_s,
            )
        )  # fmt: skip
