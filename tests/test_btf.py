"""The BTF reader behind the raw TCP probe's socket offsets (logly/tracer/btf.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from logly.tracer import btf
from logly.tracer.ebpf import SOCK_FIELDS, sock_offsets


def _blob(types: list[bytes], strings: bytes) -> bytes:
    body = b"".join(types)
    hdr = struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(body), len(body), len(strings))
    return hdr + body + strings


def _t(name: int, kind: int, vlen: int, size: int, kflag: int = 0) -> bytes:
    return struct.pack("<III", name, kflag << 31 | kind << 24 | vlen, size)


def test_members_inside_anonymous_unions_and_whole_byte_bitfields() -> None:
    strings = b"\0int\0u16\0s\0a\0b\0c\0bits\0"
    n = {w: strings.index(b"\0" + w.encode() + b"\0") + 1 for w in
         ("int", "u16", "s", "a", "b", "c", "bits")}
    types = [
        _t(n["int"], btf.INT, 0, 4) + struct.pack("<I", 32),           # 1: int
        _t(n["u16"], btf.INT, 0, 2) + struct.pack("<I", 16),           # 2: u16
        _t(0, btf.UNION, 2, 4) + struct.pack("<III", n["b"], 1, 0)     # 3: union { b; c }
        + struct.pack("<III", n["c"], 2, 0),
        # 4: struct s { int a; union { int b; u16 c; }; bits: 8 bits at bit 64, then a 3-bit
        # field (not whole bytes) named c would be refused }
        _t(n["s"], btf.STRUCT, 3, 12, kflag=1) + struct.pack("<III", n["a"], 1, 0)
        + struct.pack("<III", 0, 3, 32) + struct.pack("<III", n["bits"], 1, 8 << 24 | 64),
    ]
    b = btf.Btf(_blob(types, strings))
    assert b.offset_of("s", "a") == (0, 4)
    assert b.offset_of("s", "b") == (4, 4) and b.offset_of("s", "c") == (4, 2)
    assert b.offset_of("s", "bits") == (8, 1)
    assert b.offset_of("s", "missing") is None
    with pytest.raises(btf.BtfError):
        b.struct_id("nope")
    with pytest.raises(btf.BtfError):
        btf.Btf(b"\0" * 40)


def test_sub_byte_bitfields_are_refused() -> None:
    strings = b"\0int\0s\0f\0"
    types = [_t(1, btf.INT, 0, 4) + struct.pack("<I", 32),
             _t(5, btf.STRUCT, 1, 4, kflag=1) + struct.pack("<III", 7, 1, 3 << 24 | 4)]
    assert btf.Btf(_blob(types, strings)).offset_of("s", "f") is None


def test_missing_btf_falls_back_to_the_classic_tracepoint(tmp_path: Path) -> None:
    flags, why = sock_offsets(tmp_path / "vmlinux")
    assert flags == [] and why is not None and "cannot read" in why


@pytest.mark.skipif(not btf.VMLINUX.exists(), reason="this kernel exposes no BTF")
def test_running_kernel_socket_fields_resolve() -> None:
    b = btf.load()
    for path, sizes, _span in SOCK_FIELDS.values():
        found = b.offset_of("inet_sock", path)
        assert found is not None and found[1] in sizes, path
    # struct sock starts struct inet_sock, and sock_common starts struct sock
    assert b.offset_of("inet_sock", "sk.__sk_common.skc_family") == \
        b.offset_of("sock_common", "skc_family")
    flags, why = sock_offsets()
    assert why is None and any(f.startswith("-DSKC_SPAN_LEN=") for f in flags)
