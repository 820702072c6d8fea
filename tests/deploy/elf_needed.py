"""Which shared libraries in an image link against a library that is not there.

Run inside a container with the image's own Python (stdlib only, no binutils needed)::

    docker run -i --rm --entrypoint python IMAGE - < tests/deploy/elf_needed.py

Prints a JSON object ``{needed library name: [ELF files that need it], ...}`` of every
``DT_NEEDED`` entry of every ELF shared object under the venv's site-packages that no file
in the image provides (looked up by file name in site-packages and the system library
folders, as the dynamic loader would find it through RPATHs, the loader cache and the
libraries torch preloads). The image test uses it to show that what was cut from the
predictor image was linked by nothing that is left.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import sysconfig
from pathlib import Path

SYSTEM_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/lib/x86_64-linux-gnu",
               "/usr/lib/x86_64-linux-gnu", "/usr/local/lib")
DT_NEEDED, DT_STRTAB, SHT_DYNAMIC = 1, 5, 6


def needed(path: Path) -> list[str]:
    """DT_NEEDED names of a 64-bit little-endian ELF file ([] if it is not one); reads
    only the headers, the dynamic section and its string table (the libraries are GBs)."""
    with open(path, "rb") as f:

        def read(offset: int, size: int) -> bytes:
            f.seek(offset)
            return f.read(size)

        head = read(0, 64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return []
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        table = read(shoff, shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize)
                    for i in range(shnum)]
        out = []
        for sh in sections:
            if sh[1] != SHT_DYNAMIC:
                continue
            strtab = sections[sh[6]]  # sh_link: the dynamic section's string table
            strings = read(strtab[4], strtab[5])
            dynamic = read(sh[4], sh[5])
            for j in range(len(dynamic) // 16):
                tag, value = struct.unpack_from("<qQ", dynamic, j * 16)
                if tag == DT_NEEDED:
                    out.append(strings[value:strings.index(b"\0", value)].decode())
        return out


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    present: set[str] = set()
    for root in (str(site), *SYSTEM_DIRS):
        for _dirpath, _dirs, files in os.walk(root):
            present.update(files)
    missing: dict[str, list[str]] = {}
    for path in sorted(site.rglob("*.so*")):
        if path.is_file() and not path.is_symlink():
            for name in needed(path):
                if name not in present:
                    missing.setdefault(name, []).append(str(path.relative_to(site)))
    json.dump(missing, sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
