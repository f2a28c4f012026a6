"""strip_elf.py SITE_PACKAGES: drop the debug information and local symbols of the compiled
extensions under SITE_PACKAGES (`strip --strip-unneeded`; the dynamic symbol table, all the
loader and Python use, stays). Run by slim_venv.sh in the builder stage of the step images.

Only what is safe to rewrite: ELF shared objects that carry a symbol table or debug sections,
not the libraries auditwheel vendored into `<package>.libs/` (patchelf edited them; GNU strip
can misalign their segments: "ELF load command address/offset not page-aligned"). Each result
is checked before it replaces the original: every loadable segment must stay aligned as the
loader requires, else the original is kept. Standard library only (the builder's python3).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1


def _header(data: bytes):
    """(64-bit, endianness) of an ELF file, or None if it is not one we can read."""
    if data[:4] != ELF_MAGIC or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    return data[4] == 2, "<" if data[5] == 1 else ">"


def _sections(data: bytes) -> set[str]:
    """Names of the section headers."""
    is64, end = _header(data)
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
        name_at, offset_at, fmt = 0, 0x18, end + "Q"
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)
        name_at, offset_at, fmt = 0, 0x10, end + "I"
    if not shoff or shstrndx >= shnum:
        return set()
    strtab = shoff + shstrndx * shentsize
    strings, = struct.unpack_from(fmt, data, strtab + offset_at)
    names = set()
    for i in range(shnum):
        name, = struct.unpack_from(end + "I", data, shoff + i * shentsize + name_at)
        stop = data.index(b"\0", strings + name)
        names.add(data[strings + name:stop].decode("ascii", "replace"))
    return names


def _loads_aligned(data: bytes) -> bool:
    """Whether every PT_LOAD segment has offset = address modulo its alignment (what the
    dynamic loader checks)."""
    is64, end = _header(data)
    if is64:
        phoff, = struct.unpack_from(end + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(end + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
    for i in range(phnum):
        at = phoff + i * phentsize
        if is64:
            kind, _, offset, vaddr = struct.unpack_from(end + "IIQQ", data, at)
            align, = struct.unpack_from(end + "Q", data, at + 0x30)
        else:
            kind, offset, vaddr = struct.unpack_from(end + "III", data, at)
            align, = struct.unpack_from(end + "I", data, at + 0x1C)
        if kind == PT_LOAD and align > 1 and (vaddr - offset) % align:
            return False
    return True


def strip(path: str) -> tuple[int, int] | None:
    """Strip one file in place; (bytes before, after), or None when left as it was."""
    with open(path, "rb") as handle:
        data = handle.read()
    if _header(data) is None:
        return None
    names = _sections(data)
    if ".symtab" not in names and not any(n.startswith(".debug") for n in names):
        return None
    stripped = path + ".stripped"
    try:
        subprocess.run(["strip", "--strip-unneeded", "-o", stripped, path], check=True,
                       capture_output=True)
        with open(stripped, "rb") as handle:
            result = handle.read()
        if _header(result) is None or not _loads_aligned(result):
            print(f"strip_elf: kept {path}: stripping would misalign it", file=sys.stderr)
            return None
        os.chmod(stripped, os.stat(path).st_mode)
        os.replace(stripped, path)
        return len(data), len(result)
    finally:
        if os.path.exists(stripped):
            os.remove(stripped)


def main(site: str) -> int:
    before = after = count = 0
    for root, dirs, files in os.walk(site):
        dirs[:] = [d for d in dirs if not d.endswith(".libs")]  # auditwheel's vendored libs
        for name in files:
            path = os.path.join(root, name)
            if (name.endswith(".so") or ".so." in name) and not os.path.islink(path):
                sizes = strip(path)
                if sizes:
                    before, after, count = before + sizes[0], after + sizes[1], count + 1
    print(f"strip_elf: {count} libraries, {before / 1e6:.0f} MB -> {after / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
