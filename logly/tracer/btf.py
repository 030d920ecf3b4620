"""Byte offsets of kernel struct members, from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The kernel headers BCC compiles against may be another version than the running kernel, so
their struct layouts cannot be trusted (docs/architecture.md). The kernel's own BTF describes
the running kernel exactly: this reads just enough of it (the header, the type section, the
string section) to answer "at which byte of struct X is member a.b.c, and how wide is it",
looking through anonymous unions and structs as C does. Bitfields that are not whole,
byte-aligned bytes are refused (None): a probe reads bytes, never bits.

    load().offset_of("inet_sock", "sk.__sk_common.skc_family")  # (offset, size), or None
"""

from __future__ import annotations

import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F

# kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
# bytes that follow the 12-byte btf_type: a fixed part, and a part per vlen entry
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
          FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0), ENUM64: (0, 12)}
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}


class BtfError(Exception):
    """The BTF is missing, malformed, or lacks what was asked for."""


class Btf:
    """The types of one BTF blob: kind, name, size and members, by type id."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError("not BTF (or not little-endian)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self.strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self.data = data
        # id -> offset of its btf_type in data (id 0 is void)
        self.offsets: list[int] = [0]
        self.names: dict[str, list[int]] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        while pos < end:
            name_off, info, _size = unpack(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, per = _EXTRA.get(kind, (0, 0))
            if kind in (STRUCT, UNION) and name_off:
                self.names.setdefault(self._str(name_off), []).append(len(self.offsets))
            self.offsets.append(pos)
            pos += 12 + fixed + per * vlen
        if pos != end:
            raise BtfError("type section does not parse")

    def _str(self, off: int) -> str:
        end = self.strings.index(b"\0", off)
        return self.strings[off:end].decode("ascii", "replace")

    def _type(self, tid: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, offset of the btf_type)."""
        pos = self.offsets[tid]
        _name, info, size = struct.unpack_from("<III", self.data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size, pos

    def _resolve(self, tid: int) -> int:
        """Through typedefs and qualifiers to the type itself."""
        for _ in range(32):
            kind, _vlen, _kf, size, _pos = self._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = size
        raise BtfError("type chain too long")

    def size_of(self, tid: int) -> int | None:
        tid = self._resolve(tid)
        kind, _vlen, _kf, size, pos = self._type(tid)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return size
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self.data, pos + 12)
            esize = self.size_of(elem)
            return None if esize is None else esize * nelems
        return None

    def struct_id(self, name: str) -> int:
        for tid in self.names.get(name, []):
            kind, vlen, _kf, _size, _pos = self._type(tid)
            if kind == STRUCT and vlen:  # (a forward declaration has no members)
                return tid
        raise BtfError(f"no struct {name} in BTF")

    def member(self, tid: int, name: str) -> tuple[int, int, int] | None:
        """(byte offset, byte size, type id) of member `name` of struct/union `tid`, looking
        through anonymous struct and union members; None if absent or a bitfield not made of
        whole bytes."""
        kind, vlen, kflag, _size, pos = self._type(self._resolve(tid))
        if kind not in (STRUCT, UNION):
            return None
        base = pos + 12
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self.data, base + 12 * i)
            bits, bitsize = (moff & 0xFFFFFF, moff >> 24) if kflag else (moff, 0)
            if not name_off:  # anonymous struct or union: its members are ours
                found = self.member(mtype, name)
                if found is not None:
                    if bits % 8:
                        return None
                    return bits // 8 + found[0], found[1], found[2]
                continue
            if self._str(name_off) != name:
                continue
            if bitsize == 0:
                # an old-style bitfield is described by its int type's own encoding
                size = self.size_of(mtype)
                mkind, _v, _k, _s, mpos = self._type(self._resolve(mtype))
                if mkind == INT:
                    enc = struct.unpack_from("<I", self.data, mpos + 12)[0]
                    ibits, ioff = enc & 0xFF, (enc >> 16) & 0xFF
                    if ioff or (size is not None and ibits != size * 8):
                        if ioff % 8 or ibits % 8:
                            return None
                        bits, size = bits + ioff, ibits // 8
            else:
                if bits % 8 or bitsize % 8:
                    return None
                size = bitsize // 8
            if size is None or bits % 8:
                return None
            return bits // 8, size, mtype
        return None

    def offset_of(self, struct_name: str, path: str) -> tuple[int, int] | None:
        """(offset, size) of `path` ("a" or "a.b") inside struct `struct_name`."""
        tid = self.struct_id(struct_name)
        total = size = 0
        for part in path.split("."):
            found = self.member(tid, part)
            if found is None:
                return None
            off, size, tid = found
            total += off
        return total, size


def load(path: Path = VMLINUX) -> Btf:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BtfError(f"cannot read {path}: {exc.strerror}") from exc
    return Btf(data)
