"""Hostile ranges files (the ``ranges`` kind): random TOML for ``--ranges``.

Two ways to make one: *structured* (1-6 ``[[range]]`` tables whose fields get values of
every TOML type, huge and negative numbers, sizes with good and bad units, rules and mm
names real and invented, nested arrays and tables, duplicates, overlapping ranges at
the base kernels' MMIO), and *raw* (a structured file with bytes flipped, junk tokens
inserted, cut short, deeply nested, huge integer literals, invalid UTF-8, BOM, CRLF).
A file goes through ``collectors.userranges.load`` and, when it loads, through the whole
report on a base kernel (the VA checks happen there: ``to_ranges`` and the walk).
"""
from __future__ import annotations

import json
import os
import random

from tests.fuzz.gen_tables import BASES, base, interesting
from tests.fuzz.kernels import BIOS_PA, FLASH, MMR_HI

PHYS_LIMIT = 1 << 52
PAS = [FLASH, 0xFA000000, 0xFC000000, BIOS_PA, MMR_HI, 0x7E100000, 0, 0x1000,
       PHYS_LIMIT - 4096, PHYS_LIMIT, 1 << 64, 0x7FFFFFFFF000, 0x7FFFFFFFE000, 0xFED40000]
UNITS = ["", "B", "K", "KiB", "kib", "KIB", "M", "MiB", "G", "GiB", "T", "TiB", "PiB", "EiB",
         "KB", "mb", "Ki B", "iB", "x"]
RULES = ["direct", "identity", "efi_va", "bogus", "DIRECT", ""]
MMS = ["init_mm", "efi_mm", "kernel", "efi", "user", "", "init_mm "]
CACHES = ["UC", "WB", "uncached", "any", "UC-", "WC", "WT", "WP", "wt", "bogus", ""]


class Raw(str):
    """A value written into the TOML text as is (dates, other bases, inf, junk)."""


def toml_value(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def _any(rng: random.Random, depth: int = 0):
    c = rng.randrange(9 if depth < 3 else 6)
    if c == 0:
        return interesting(rng)
    if c == 1:
        return -interesting(rng)
    if c == 2:
        return rng.choice(["", "x", "0x1000", "4KiB", "\u00fc", "\x00", "a" * 100])
    if c == 3:
        return rng.random() < 0.5
    if c == 4:
        return rng.choice([Raw("1979-05-27T07:32:00Z"), Raw("0o17"), Raw("0b101"), Raw("inf"),
                           Raw("nan"), Raw("1_000"), Raw("1e3"), Raw("-0")])
    if c == 5:
        return 1.5
    if c in (6, 7):
        return [_any(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "init_mm", "efi_mm", "x y"]): _any(rng, depth + 1)
            for _ in range(rng.randrange(3))}


def _start(rng: random.Random):
    pa = rng.choice(PAS) if rng.random() < 0.6 else rng.getrandbits(rng.choice([32, 44, 52])) & ~0xFFF
    if rng.random() < 0.1:
        pa += rng.choice([1, 8, 0x800])
    c = rng.random()
    if c < 0.5:
        return Raw(hex(pa)) if pa < 1 << 64 else pa
    if c < 0.65:
        return pa
    if c < 0.8:
        return rng.choice([hex(pa), str(pa), f" {hex(pa)} ", f"0X{pa:X}"])
    if c < 0.9:
        return -pa - 4096
    return _any(rng)


def _size(rng: random.Random):
    n = rng.choice([4096, 8192, 1 << 21, 32 << 20, 1 << 30, 1 << 40, 0, 1, 4095,
                    rng.randrange(1, 1 << 20) * 4096, interesting(rng)])
    c = rng.random()
    if c < 0.35:
        return n
    if c < 0.8:
        num = rng.choice([1, 2, 4, 16, 32, 64, 4096, 4097, 0, rng.randrange(10000),
                          10 ** rng.choice([5, 20, 70])])
        return rng.choice(["", " "]) + (hex(num) if rng.random() < 0.2 else str(num)) + \
            rng.choice(["", " "]) + rng.choice(UNITS)
    if c < 0.9:
        return -n
    return _any(rng)


def _rules(rng: random.Random, depth: int = 0):
    c = rng.random()
    if c < 0.4:
        return rng.choice(RULES)
    if c < 0.6:
        return [rng.choice(RULES) for _ in range(rng.randrange(4))]
    if c < 0.85 and depth == 0:
        return {rng.choice(MMS): _rules(rng, 1) for _ in range(rng.randrange(3))}
    return _any(rng)


VALID_SIZES = [(4096, "4096"), (16 << 10, '"16KiB"'), (2 << 20, '"2MiB"'), (32 << 20, '"32MiB"'),
               (1 << 30, '"1GiB"'), (4 << 40, '"4TiB"'), (1024 << 40, '"1024TiB"'),
               (4096 << 40, '"4096TiB"'), (0x10000, "0x10000"), (64 << 20, '"0x4000000"')]
VALID_CACHES = ["UC", "WB", "uncached", "any", "UC-", "WC", "WT", "WP"]
VALID_RULES = ["direct", "identity", "efi_va"]


def _valid(rng: random.Random, i: int) -> dict:
    """A range the validator accepts (hostile only in what it asks of the kernel)."""
    while True:
        pa = rng.choice(PAS) if rng.random() < 0.7 else rng.getrandbits(
            rng.choice([32, 44, 52])) & ~0xFFF
        size, size_text = rng.choice(VALID_SIZES)
        if pa + size <= PHYS_LIMIT:
            break
    item = {"name": f"r{i}", "start": Raw(hex(pa)) if rng.random() < 0.7 else hex(pa),
            "size": Raw(size_text)}
    mms = rng.choice([None, ["init_mm"], ["efi_mm"], ["kernel", "efi"], ["efi", "efi_mm"]])
    if mms is not None:
        item["mms"] = mms
    c = rng.random()
    if c < 0.3:
        item["va"] = rng.choice(VALID_RULES)
    elif c < 0.45:
        item["va"] = rng.sample(VALID_RULES, rng.randrange(1, 4))
    elif c < 0.6:
        names = ["init_mm", "efi_mm"] if mms is None else             sorted({{"kernel": "init_mm", "efi": "efi_mm"}.get(m, m) for m in mms})
        item["va"] = {m: rng.choice([rng.choice(VALID_RULES), rng.sample(VALID_RULES, 2)])
                      for m in names}
    if rng.random() < 0.5:
        item["cache"] = rng.choice(VALID_CACHES) if rng.random() < 0.6 else \
            rng.sample(VALID_CACHES, rng.randrange(1, 4))
    for f in ("writable", "executable", "required"):
        if rng.random() < 0.3:
            item[f] = rng.random() < 0.5
    return item


def _hostile(rng: random.Random, item: dict, i: int, names: list, p_bad: float) -> dict:
    """``item`` with each field replaced by a hostile value with probability ``p_bad``."""
    def bad() -> bool:
        return rng.random() < p_bad
    if bad():
        item["name"] = rng.choice(["", "a b", "x" * 65, "\u00fc", "\n", *names[-1:], _any(rng)])
    if bad():
        item.pop("name")
    if bad():
        item["start"] = _start(rng)
    if bad():
        item["size"] = _size(rng)
    if bad():
        item.pop(rng.choice(["start", "size"]))
    if bad():
        item["mms"] = [rng.choice(MMS) for _ in range(rng.randrange(0, 4))] \
            if rng.random() < 0.8 else _any(rng)
    if bad():
        item["va"] = _rules(rng)
    if bad():
        item["cache"] = rng.choice(CACHES) if rng.random() < 0.5 else \
            [rng.choice(CACHES) for _ in range(rng.randrange(0, 4))] \
            if rng.random() < 0.7 else _any(rng)
    for f in ("writable", "executable", "required"):
        if bad():
            item[f] = _any(rng)
    if bad():
        item[rng.choice(["nmae", "Start", "extra", "range"])] = _any(rng)
    return item


def structured(rng: random.Random) -> str:
    p_bad = rng.choice([0.0, 0.0, 0.02, 0.05, 0.15, 0.4])
    out, names = [], []
    for i in range(rng.randrange(1, 7)):
        item = _hostile(rng, _valid(rng, i), i, names, p_bad)
        names.append(str(item.get("name", "")))
        out.append("[[range]]\n" + "".join(f"{_key(k)} = {toml_value(v)}\n"
                                            for k, v in item.items()))
    if rng.random() < p_bad / 4:
        out.insert(0, rng.choice(["title = \"x\"\n", "range = 5\n", "[range]\nname = \"x\"\n"]))
    return "\n".join(out)


def raw(rng: random.Random, text: str) -> bytes:
    data = bytearray(text.encode())
    c = rng.randrange(9)
    if c == 0 and data:
        for _ in range(rng.choice([1, 3, 10])):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif c == 1:
        for _ in range(rng.choice([1, 3])):
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.choice([b"[[range]]\n", b"=", b"[", b"]", b"{", b"\"", b"'''",
                                      b"\n", b"\x00", b"\xff", b"\\u0000", b"#", b",", b"\r"])
    elif c == 2:
        del data[rng.randrange(len(data) + 1):]
    elif c == 3:
        d = rng.choice([10, 100, 999, 1000, 2000, 5000])
        opener, closer = rng.choice([(b"[", b"]"), (b"{a=", b"}"), (b"[{a=", b"}]")])
        data += b"\n[[range]]\nname=\"deep\"\nstart=0\nsize=4096\nva=" + opener * d + \
            b"1" * (opener == b"{a=") + closer * d + b"\n"
    elif c == 4:
        data += b"\n[[range]]\nname=\"big\"\nstart=" + b"9" * rng.choice([19, 20, 100, 4300, 5000]) \
            + b"\nsize=4096\n"
    elif c == 5:
        data = bytearray(b"\xef\xbb\xbf") + data.replace(b"\n", b"\r\n")
    elif c == 6:
        data += b"\n# " + b"x" * rng.choice([1000, 100000]) + b"\n"
    elif c == 7:
        data = data.replace(b"[[range]]", rng.choice([b"[range]", b"[[range.x]]", b"[[ range ]]",
                                                      b"[[\"range\"]]"]), 1)
    else:
        data += b"\n" + b"[[range]]\n" * rng.choice([2, 500]) + b"name=\"n\"\nstart=0\nsize=1\n"
    return bytes(data)


def make(rng: random.Random) -> tuple[bytes, str]:
    text = structured(rng)
    if rng.random() < 0.2:
        return raw(rng, text), "raw"
    return text.encode(), "structured"


def run(rng: random.Random, out, keep=None):
    from tests.fuzz import gen_dumps, gen_tables, harness
    data, out.sub = make(rng)
    d = keep or harness.tmpdir()
    path = os.path.join(d, f"r{out.seed}.toml")
    with open(path, "wb") as f:
        f.write(data)
    out.recipe = [f"ranges file ({out.sub}, {len(data)} bytes): {data[:600]!r}"
                  + (" ..." if len(data) > 600 else "")]
    cmds = harness.commands(rng, ranges=path)
    files = []
    try:
        if out.cli or keep:
            b = gen_dumps.get_base(rng.randrange(len(gen_dumps.DUMP_BASES)))
            files = [os.path.join(d, f"r{out.seed}.{ext}") for ext in ("elf", "btf", "map")]
            for p, blob in zip(files, (b.core, b.btf, b.map)):
                with open(p, "wb") as f:
                    f.write(blob)
            from tests.fuzz.synthdump import cli_args
            args = ["--vmcore", files[0]] if b.kallsyms else cli_args(*files)
            out.command = " ; ".join("mmrwatch " + " ".join(c[:1] + args + c[1:]) for c in cmds)
            if out.cli:
                return harness.cli_run(out, [c[:1] + args + c[1:] for c in cmds])
        bi = rng.randrange(len(BASES))
        out.recipe.append(f"checked on tables base {bi}")
        target = gen_tables.target_of(base(bi).clone())
        return harness.inprocess(out, lambda: harness.run_commands(target, cmds))
    finally:
        if not keep:
            for p in [path, *files]:
                os.unlink(p)
