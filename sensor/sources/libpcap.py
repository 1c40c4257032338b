"""The one libpcap binding the file prefilter (``prefilter``) and the live ring (``ring``)
share: the library, loaded once; libpcap's BPF program and packet header; and zero-copy
views of the memory libpcap hands out. Each user declares the signatures of the functions
it calls on the same library object."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
from typing import Final


class BpfProgram(ctypes.Structure):  # struct bpf_program
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p))


class PktHdr(ctypes.Structure):  # struct pcap_pkthdr, for functions that take one
    _fields_ = (
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    )


PKTHDR: Final = struct.Struct("@llII")  # struct pcap_pkthdr, read: timeval, caplen, len
# libpcap's record buffer is at least as long as the record in it (it is reallocated, and
# its address changes, for a longer one). A view spans the longest caplen libpcap accepts
# for these link types and is only ever sliced to the current record's caplen.
MAX_CAPLEN: Final = 262144


@functools.cache
def load() -> ctypes.CDLL | None:
    """libpcap, or None. Debian's soname first: ``ctypes.util.find_library`` runs
    ``ldconfig -p`` in a child process, a few ms of every start-up (more on a busy host)."""
    try:
        return ctypes.CDLL("libpcap.so.0.8")
    except OSError:
        try:
            return ctypes.CDLL(ctypes.util.find_library("pcap") or "libpcap.so")
        except OSError:
            return None


def view(address: int, size: int) -> memoryview:
    """Bytes at ``address`` owned by libpcap, without copying."""
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")
