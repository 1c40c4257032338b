"""QUIC Initial packets: the ClientHello server_name, QUIC v1 (RFC 9000/9001), v2 (RFC 9369) and
drafts 23-34 (``0xff0000NN``: v1's wire format, labels and packet types; each draft's salt).

A client's Initial packets are encrypted with keys anyone can derive from the Destination
Connection ID of its first Initial (RFC 9001 section 5.2). ``QuicInitialTracker`` removes header
protection, decrypts each client Initial (AES-128-GCM), collects the CRYPTO frames by offset
(clients split the ClientHello over several Initials and shuffle the frames) and, once bytes
``[0, 4 + hello_len)`` are in, hands the hello to ``parse_client_hello`` -- once per connection.

Server Initials are protected with server keys, which need the client's original DCID; they carry
no ClientHello, so datagrams on the reverse of a known client flow are skipped unread. Keys are
derived once per (version, DCID) and cached; connection state is bounded by count, per-connection
CRYPTO bytes and a TTL.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, NamedTuple, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sensor.decode import DecodeError, Sighting
from sensor.decode.native import NATIVE, decoders
from sensor.decode.quic_crypto import CryptoStream, crypto_frames, varint

VERSION_1: Final = 0x00000001
VERSION_2: Final = 0x6B3343CF

_SALT_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
# draft-ietf-quic-tls section 5.2: one salt for drafts 23-28, another for 29-32; 33 and 34
# already use v1's. Draft 22 and older are not decoded (other frame and header details).
_DRAFT_SALTS: Final = (
    (range(23, 29), bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")),
    (range(29, 33), bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")),
    (range(33, 35), _SALT_V1),
)
_SALTS: Final = {
    VERSION_1: _SALT_V1,
    VERSION_2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
    **{0xFF000000 | draft: salt for drafts, salt in _DRAFT_SALTS for draft in drafts},
}
_LABELS_V1: Final = (b"quic key", b"quic iv", b"quic hp")  # key, iv, hp; the drafts' too
_LABELS: Final = {VERSION_2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")}
# long-header packet type bits: v2 swapped them; the drafts have v1's
_INITIAL_TYPE: Final = {v: 0b01 if v == VERSION_2 else 0b00 for v in _SALTS}
_RETRY_TYPE: Final = {v: 0b00 if v == VERSION_2 else 0b11 for v in _SALTS}

_MAX_CID: Final = 20
_SAMPLE_LEN: Final = 16
_TAG_LEN: Final = 16
_MAX_ALIASES: Final = 8  # DCIDs one connection may be seen under (server-chosen, Retry)

Flow = tuple[bytes, int, bytes, int]  # src address (packed), src port, dst address, dst port


# --- key derivation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitialSecrets:
    """Client Initial secrets for one (version, DCID): RFC 9001 A.1 / RFC 9369 A.1 values."""

    secret: bytes
    key: bytes
    iv: bytes
    hp: bytes


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 section 7.1), SHA-256."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = _hmac_sha256(secret, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def client_initial_secrets(version: int, dcid: bytes) -> InitialSecrets:
    """Derive the client Initial secret, AEAD key, IV and header-protection key."""
    salt = _SALTS.get(version)
    if salt is None:
        raise DecodeError(f"no Initial salt for QUIC version {version:#010x}")
    initial = _hmac_sha256(salt, dcid)  # HKDF-Extract(salt, DCID)
    secret = hkdf_expand_label(initial, b"client in", 32)
    key_label, iv_label, hp_label = _LABELS.get(version, _LABELS_V1)
    return InitialSecrets(
        secret=secret,
        key=hkdf_expand_label(secret, key_label, 16),
        iv=hkdf_expand_label(secret, iv_label, 12),
        hp=hkdf_expand_label(secret, hp_label, 16),
    )


class _Keys:
    """Ready-to-use ciphers for one (version, DCID)."""

    __slots__ = ("aead", "hp", "iv")

    def __init__(self, secrets: InitialSecrets) -> None:
        self.aead = AESGCM(secrets.key)
        self.iv = int.from_bytes(secrets.iv, "big")
        # RFC 9001 5.4.3: header protection is one AES block of the sample (ECB by definition).
        ecb = Cipher(algorithms.AES(secrets.hp), modes.ECB())  # noqa: S305
        self.hp: CipherContext = ecb.encryptor()


# --- wire format ----------------------------------------------------------------------------


class _Header(NamedTuple):
    start: int
    version: int
    initial: bool
    dcid: bytes
    scid: bytes
    pn_offset: int
    end: int  # end of this packet within the datagram


def looks_like_quic_initial(payload: bytes) -> bool:
    """Cheap test: long header with the fixed bit, a known version, Initial packet type."""
    if len(payload) < 7 or payload[0] & 0xC0 != 0xC0:
        return False
    itype = _INITIAL_TYPE.get(int.from_bytes(payload[1:5], "big"))
    return itype is not None and (payload[0] >> 4) & 0x03 == itype


def _long_header(data: bytes, pos: int) -> _Header | None:
    """The long header at ``pos``; None for short headers, padding, Version Negotiation and
    versions we cannot parse (nothing after them can be located)."""
    first = data[pos]
    if not first & 0x80:
        return None
    if pos + 7 > len(data):
        raise DecodeError("quic long header cut short")
    version = int.from_bytes(data[pos + 1 : pos + 5], "big")
    if version not in _SALTS:
        return None
    p = pos + 5
    dcid, p = _cid(data, p)
    scid, p = _cid(data, p)
    ptype = (first >> 4) & 0x03
    if ptype == _RETRY_TYPE[version]:
        return _Header(pos, version, False, dcid, scid, len(data), len(data))
    initial = ptype == _INITIAL_TYPE[version]
    if initial:
        token_len, p = varint(data, p)
        p += token_len
    length, p = varint(data, p)
    end = p + length
    if end > len(data):
        raise DecodeError("quic packet length runs past the datagram")
    return _Header(pos, version, initial, dcid, scid, p, end)


def _cid(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise DecodeError("quic long header cut short")
    size = data[pos]
    if size > _MAX_CID:
        raise DecodeError(f"quic connection id of {size} bytes")
    end = pos + 1 + size
    if end > len(data):
        raise DecodeError("quic connection id cut short")
    return data[pos + 1 : end], end


def _decode_pn(largest: int, truncated: int, nbits: int) -> int:
    """RFC 9000 appendix A.3: the full packet number nearest the expected one."""
    expected = largest + 1
    win = 1 << nbits
    hwin = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def _open(data: bytes, hdr: _Header, keys: _Keys, largest_pn: int) -> tuple[int, bytes] | None:
    """Remove header protection and decrypt; (packet number, plaintext), None on a tag mismatch."""
    pn_offset, end = hdr.pn_offset, hdr.end
    if end - pn_offset < 4 + _SAMPLE_LEN:
        raise DecodeError("quic initial too short for the header-protection sample")
    mask = keys.hp.update(data[pn_offset + 4 : pn_offset + 4 + _SAMPLE_LEN])
    first = data[hdr.start] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(
        b ^ m for b, m in zip(data[pn_offset : pn_offset + pn_len], mask[1:], strict=False)
    )
    header = bytes([first]) + data[hdr.start + 1 : pn_offset] + pn_bytes
    pn = _decode_pn(largest_pn, int.from_bytes(pn_bytes, "big"), 8 * pn_len)
    nonce = (keys.iv ^ pn).to_bytes(12, "big")
    try:
        plain = keys.aead.decrypt(nonce, data[pn_offset + pn_len : end], header)
    except InvalidTag:
        return None
    return pn, plain


# --- per-connection state ---------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Conn:
    flow: Flow
    dcid: bytes  # the original DCID: the key in ``_conns``
    scid: bytes  # the client's SCID, kept across Retry
    key_dcid: bytes  # the DCID the client's Initial keys come from (changed by a Retry)
    last_seen: float
    stream: CryptoStream | None  # None once the hello was handled
    version: int  # a client Initial in another version starts over (after Version Negotiation)
    largest_pn: int = -1
    aliases: list[bytes] = field(default_factory=list)  # every DCID indexed in ``_by_dcid``


class QuicInitialTracker:
    """Reassembles client Initial CRYPTO data per connection (keyed by the client's original DCID
    plus the UDP 4-tuple given by the caller), across several Initial packets and out of order;
    bounded."""

    def __init__(
        self,
        max_connections: int = 4096,
        max_crypto_bytes: int = 65536,
        ttl_s: float = 10.0,
        pure: bool = False,
    ) -> None:
        self._decode, self._native = decoders(pure), None if pure else NATIVE  # (Sensor's)
        if max_connections < 1 or max_crypto_bytes < 4:
            raise ValueError("max_connections must be >= 1 and max_crypto_bytes >= 4")
        self.max_connections = max_connections
        self.max_crypto_bytes = max_crypto_bytes
        self.ttl_s = ttl_s
        self.evicted = 0
        self.keys_evicted = 0  # cached Initial keys dropped (cache bounded by ``_max_keys``)
        self._conns: OrderedDict[tuple[Flow, bytes], _Conn] = OrderedDict()  # least recent first
        self._by_dcid: dict[tuple[Flow, bytes], _Conn] = {}
        self._by_flow: dict[Flow, _Conn] = {}  # newest connection per client flow
        self._keys: OrderedDict[tuple[int, bytes], object] = OrderedDict()
        self._max_keys = max(16, min(max_connections, 1024))

    def __len__(self) -> int:
        return len(self._conns)

    def feed(self, flow: Flow, payload: bytes, now: float) -> Sighting | None:
        """Feed one UDP payload (possibly several coalesced QUIC packets) of ``flow``.

        Returns the quic_sni Sighting when this datagram completes a connection's ClientHello
        (once per connection), else None. Raises DecodeError for malformed packets claiming to be
        QUIC, and for an Initial that fails authentication with client keys unless it travels the
        reverse way of a known client flow (a server Initial, skipped unread).
        """
        self._expire(now)
        if (flow[2], flow[3], flow[0], flow[1]) in self._by_flow:
            return None  # server -> client: server keys, no ClientHello
        found: Sighting | None = None
        pos = 0
        try:
            while pos < len(payload):
                try:
                    hdr = _long_header(payload, pos)
                except DecodeError:
                    if pos == 0:
                        raise
                    break  # junk after the first packet ends the datagram
                if hdr is None:
                    break
                if hdr.initial:
                    sighting = self._initial(flow, payload, hdr, now)
                    if sighting is not None:
                        found = sighting
                pos = hdr.end
        except DecodeError:
            if found is None:
                raise
        return found

    # -- internals --

    def _initial(self, flow: Flow, data: bytes, hdr: _Header, now: float) -> Sighting | None:
        conn = self._by_dcid.get((flow, hdr.dcid))
        if conn is not None and conn.stream is None and conn.version == hdr.version:
            self._touch(conn, now)
            return None  # hello already handled: retransmissions and ACK-only Initials
        known = conn if conn is not None else self._by_flow.get(flow)
        if known is not None and known.version != hdr.version:
            # after Version Negotiation the client starts over in a version the server offered
            known = None
        candidates = [hdr.dcid] if known is None else [known.key_dcid, hdr.dcid]
        for key_dcid in dict.fromkeys(candidates):
            largest = known.largest_pn if known is not None and key_dcid == known.key_dcid else -1
            keys = self._derive(hdr.version, key_dcid)
            opened = self._open(data, hdr, keys, largest)
            if opened is not None:
                self._remember_keys(hdr.version, key_dcid, keys)
                break
        else:
            raise DecodeError("quic Initial fails authentication with client keys")
        pn, plain = opened
        conn = self._connection(flow, hdr, key_dcid, known, now)
        conn.largest_pn = max(conn.largest_pn, pn)
        if conn.stream is None:
            return None
        return self._crypto(conn, plain)

    def _connection(
        self, flow: Flow, hdr: _Header, key_dcid: bytes, known: _Conn | None, now: float
    ) -> _Conn:
        """The connection a decrypted client Initial belongs to, created or aliased as needed."""
        if known is not None and key_dcid == known.key_dcid:
            pass  # same keys: same connection (possibly under a server-chosen DCID)
        elif known is not None and hdr.scid and hdr.scid == known.scid:
            known.key_dcid = key_dcid  # after a Retry: new DCID, new keys, same client
        else:
            known = self._new_conn(flow, hdr, now)
        if hdr.dcid not in known.aliases and len(known.aliases) < _MAX_ALIASES:
            known.aliases.append(hdr.dcid)
            self._by_dcid[(flow, hdr.dcid)] = known
        self._touch(known, now)
        return known

    def _new_conn(self, flow: Flow, hdr: _Header, now: float) -> _Conn:
        while len(self._conns) >= self.max_connections:
            self._evict(next(iter(self._conns.values())))
        old = self._conns.get((flow, hdr.dcid))
        if old is not None:
            self._evict(old)  # a new connection reusing a DCID on the same 4-tuple
        stream = CryptoStream(self.max_crypto_bytes)
        conn = _Conn(flow, hdr.dcid, hdr.scid, hdr.dcid, now, stream, hdr.version)
        self._conns[(flow, hdr.dcid)] = conn
        self._by_flow[flow] = conn
        return conn

    def _crypto(self, conn: _Conn, plain: bytes) -> Sighting | None:
        stream = conn.stream
        assert stream is not None
        try:
            for offset, chunk in crypto_frames(plain):
                stream.add(offset, chunk)
            hello = stream.hello()
            if hello is None:
                return None
        except DecodeError:
            conn.stream = None  # give up on this connection, report once
            raise
        conn.stream = None
        return self._decode.parse_client_hello(hello, "quic_sni")

    def _touch(self, conn: _Conn, now: float) -> None:
        conn.last_seen = now
        self._conns.move_to_end((conn.flow, conn.dcid))

    def _expire(self, now: float) -> None:
        while self._conns:
            oldest = next(iter(self._conns.values()))
            if now - oldest.last_seen <= self.ttl_s:
                break
            self._evict(oldest)

    def _evict(self, conn: _Conn) -> None:
        if self._conns.get((conn.flow, conn.dcid)) is conn:
            del self._conns[(conn.flow, conn.dcid)]
        for dcid in conn.aliases:
            if self._by_dcid.get((conn.flow, dcid)) is conn:
                del self._by_dcid[(conn.flow, dcid)]
        if self._by_flow.get(conn.flow) is conn:
            del self._by_flow[conn.flow]
        self.evicted += 1

    def _derive(self, version: int, dcid: bytes) -> object:
        keys = self._keys.get((version, dcid))
        if keys is not None:
            self._keys.move_to_end((version, dcid))
            return keys
        if self._native is None or version not in _SALTS:  # an unknown one: the pure error
            return _Keys(client_initial_secrets(version, dcid))
        return cast(
            object,
            self._native.initial_keys(_SALTS[version], dcid, *_LABELS.get(version, _LABELS_V1)),
        )

    def _open(self, data: bytes, h: _Header, keys: object, pn: int) -> tuple[int, bytes] | None:
        if isinstance(keys, _Keys) or self._native is None:  # (compiled keys: compiled module)
            return _open(data, h, cast(_Keys, keys), pn)
        opened = self._native.open_initial(keys, data, h.start, h.pn_offset, h.end, pn)
        return cast("tuple[int, bytes] | None", opened)

    def _remember_keys(self, version: int, dcid: bytes, keys: object) -> None:
        """Cache keys that opened a packet (never those of garbage DCIDs)."""
        if (version, dcid) in self._keys:
            return
        self._keys[(version, dcid)] = keys
        if len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
            self.keys_evicted += 1
