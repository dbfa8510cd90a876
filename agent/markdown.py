"""The report as Markdown, for pasting into tickets: verdict first, then tables.

It renders the same JSON document ``report --format json`` prints (``report.as_dict``), so
the two can never disagree.
"""
from __future__ import annotations

from typing import Any

from mmrwatch.collectors.ranges import human_size, segment_label
from mmrwatch.collectors.vocab import TABLE


def _cell(v: Any) -> str:
    s = "-" if v is None or v == "" or v == [] else str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def render(doc: dict[str, Any]) -> str:
    k, t = doc["kernel"], doc["target"]
    out = [f"# mmrwatch report: {k['release']}", "",
           f"**Verdict ({doc['verdict'].upper()}):** {doc['verdict_text']}", ""]
    crash = doc.get("crash")
    if crash and crash["crashed"]:
        out += [f"**Crash:** {crash['verdict']}", ""]
    out += ["## Kernel", ""] + _table(["", ""], [
        ["release", k["release"]], ["build-id", t["build_id"] or "not recorded"],
        ["target", f"`{t['path']}` ({t['format']}{', live' if t['live'] else ''})"],
        ["debug info", _debug_info(t["debug_info"])], ["paging", f"{k['paging_levels']}-level"],
        ["direct map", f"`{k['page_offset_base']}`"], ["KASLR offset", f"`{k['kaslr_offset']}`"]])
    uv = doc.get("uv")
    if uv:
        out += ["## UV system", ""] + _table(list(uv), [list(uv.values())])
    if crash is not None:
        out += _crash(crash)
    out += ["## Address spaces", ""] + _table(
        ["mm", "state", "root PA", "from / reason"],
        [[n, s["state"], s["root_pa"], s["source"] if s["state"] == TABLE else s["reason"]]
         for n, s in doc["address_spaces"].items()])
    rows = []
    for r in doc["ranges"]:
        label = segment_label(r["name"], r.get("pnode"), r["blade"])
        for e in r["expectations"]:
            rows.append([label, f"`{r['phys_start']}`", human_size(r["size"]), e["mm"], e["rule"],
                         f"**{e['severity'].upper()}** {e['status']}" if e["severity"] in
                         ("warning", "critical") else e["status"],
                         human_size(e["mapped_bytes"]), human_size(e["missing_bytes"]),
                         "/".join(e["cache_modes"]), e["message"]])
    out += [f"## Ranges ({len(doc['ranges'])})", ""] + _table(
        ["range", "PA", "size", "mm", "VA rule", "status", "mapped", "missing", "cache",
         "detail"], rows)
    if doc["walk_errors"]:
        out += ["## Page-table errors", ""] + [f"- {e['message']} (VA `{e['va']}`)"
                                               for e in doc["walk_errors"][:50]] + [""]
    if doc["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    out.append(f"_mmrwatch {doc['tool']['version']}, checked in {doc['stats']['seconds']} s_")
    return "\n".join(out) + "\n"


def _crash(c: dict[str, Any]) -> list[str]:
    out = ["## Crash forensics", "", c["verdict"], ""]
    unread = [f"- could not be read: {n}" for n in c["notes"]] + ([""] if c["notes"] else [])
    if not c["crashed"]:
        return out + unread
    facts = [["crashed CPU", c["panic_cpu"]], ["task", c["task"]],
             ["panic", c["panic_message"]], ["fault address", c["fault_address"] and
                                            f"`{c['fault_address']}`"],
             ["what is there", c["fault_region"]], ["fault", "; ".join(c["fault_kind"])]]
    out += _table(["", ""], [f for f in facts if f[1] not in (None, "")])
    if c["translations"]:
        out += _table(["page table", "maps the fault address?", "PA", "page", "cache", "perms"],
                      [[t["mm"], {True: "yes", False: "**no**", None: t["note"]}[t["mapped"]],
                        t["pa"], t["page_size"] and human_size(t["page_size"]), t["cache_mode"],
                        t["perms"]] for t in c["translations"]])
    out += _table(["CPU", "page table loaded", "running", ""],
                  [[x["cpu"], x["mm"], x["task"], "crashed" if x["crashed"] else ""]
                   for x in c["cpus"]])
    if c["log_excerpt"]:
        out += ["```"] + c["log_excerpt"] + ["```", ""]
    return out + unread


def _debug_info(d: dict) -> str:
    if d["types"] == "dwarf":
        return f"DWARF `{d['types_path']}`"
    return f"BTF `{d['types_path']}`, symbols: {d['symbols']} `{d['symbols_path']}`"
