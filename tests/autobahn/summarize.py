#!/usr/bin/env python3
"""Summarize an Autobahn/kosoku server report and fail on non-conformance.

Usage: summarize.py [reports/servers/index.json] [--allow-unimplemented 12,13]
                    [--require-groups 1,2,...] [--max-details N]

Prints the count of each behaviour (OK, NON-STRICT, INFORMATIONAL,
UNIMPLEMENTED, FAILED) and each close behaviour, overall and per case group,
then every failing case with what the server did (from the per-case JSON).

Exit status 1 when any case has
  - behaviour FAILED (or ERROR: the case could not be run), or
  - behaviour UNIMPLEMENTED outside the --allow-unimplemented groups
    (permessage-deflate, 12.x and 13.x, may be unimplemented), or
  - a close behaviour other than OK or INFORMATIONAL (FAILED, WRONG CODE,
    UNCLEAN, FAILED BY CLIENT: Autobahn counts all of these as failures);
or when the report is missing, empty, or lacks a --require-groups group.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

BEHAVIOURS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
CLOSE_BEHAVIOURS = ["OK", "INFORMATIONAL", "FAILED", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT"]
BAD_BEHAVIOURS = {"FAILED", "ERROR"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}


def case_key(case_id: str) -> list[int]:
    return [int(p) if p.isdigit() else 0 for p in case_id.split(".")]


def group_of(case_id: str) -> str:
    return case_id.split(".", 1)[0]


def parse_groups(text: str) -> set[str]:
    return {g.strip() for g in text.split(",") if g.strip()}


def short(value: object, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(title: str, labels: list[str], rows: dict[str, Counter]) -> None:
    extra = sorted({k for c in rows.values() for k in c} - set(labels))
    labels = labels + extra
    width = max(len(title), 5)
    print(f"{title:<{width}} " + " ".join(f"{label:>{max(len(label), 4)}}" for label in labels) + "  total")
    for name in sorted(rows, key=lambda g: (g != "all", case_key(g))):
        counts = rows[name]
        cells = " ".join(f"{counts.get(label, 0):>{max(len(label), 4)}}" for label in labels)
        print(f"{name:<{width}} {cells}  {sum(counts.values()):>5}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", nargs="?", default="reports/servers/index.json")
    ap.add_argument("--allow-unimplemented", default="12,13", metavar="GROUPS",
                    help="case groups that may be UNIMPLEMENTED (default: 12,13)")
    ap.add_argument("--require-groups", default="", metavar="GROUPS",
                    help="case groups that must be present in the report")
    ap.add_argument("--max-details", type=int, default=60,
                    help="print details for at most this many failing cases")
    args = ap.parse_args()

    try:
        with open(args.index, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print(f"summarize: cannot read {args.index}: {e}", file=sys.stderr)
        return 1
    report_dir = os.path.dirname(os.path.abspath(args.index))

    # index.json: {agent: {case_id: {behavior, behaviorClose, remoteCloseCode, duration, reportfile}}}
    cases: dict[str, dict] = {}
    for agent, entries in index.items():
        for case_id, entry in entries.items():
            cases[case_id] = dict(entry, agent=agent)
    if not cases:
        print(f"summarize: {args.index} lists no cases", file=sys.stderr)
        return 1
    agents = sorted(index)
    allow_unimpl = parse_groups(args.allow_unimplemented)

    by_group: dict[str, Counter] = {"all": Counter()}
    close_by_group: dict[str, Counter] = {"all": Counter()}
    failing: list[tuple[str, list[str]]] = []
    total_ms = 0
    for case_id in sorted(cases, key=case_key):
        e = cases[case_id]
        g = group_of(case_id)
        b, bc = e.get("behavior", "?"), e.get("behaviorClose", "?")
        for rows, label in ((by_group, b), (close_by_group, bc)):
            rows["all"][label] += 1
            rows.setdefault(g, Counter())[label] += 1
        total_ms += int(e.get("duration") or 0)
        why = []
        if b in BAD_BEHAVIOURS:
            why.append(f"behaviour {b}")
        elif b == "UNIMPLEMENTED" and g not in allow_unimpl:
            why.append("behaviour UNIMPLEMENTED (not allowed in this group)")
        elif b not in BEHAVIOURS:
            why.append(f"unknown behaviour {b!r}")
        if bc not in GOOD_CLOSE:
            why.append(f"close behaviour {bc}")
        if why:
            failing.append((case_id, why))

    print(f"Autobahn report {args.index}: {len(cases)} cases, agent {', '.join(agents)}, "
          f"case time {total_ms / 1000:.1f} s")
    print()
    print("Behaviour per case group:")
    table("group", BEHAVIOURS, by_group)
    print()
    print("Close behaviour per case group:")
    table("group", CLOSE_BEHAVIOURS, close_by_group)
    print()
    all_b, all_c = by_group["all"], close_by_group["all"]
    print("behaviour: " + ", ".join(f"{label} {all_b.get(label, 0)}" for label in BEHAVIOURS)
          + "".join(f", {k} {v}" for k, v in all_b.items() if k not in BEHAVIOURS))
    print("close behaviour: " + ", ".join(f"{label} {all_c.get(label, 0)}" for label in CLOSE_BEHAVIOURS)
          + "".join(f", {k} {v}" for k, v in all_c.items() if k not in CLOSE_BEHAVIOURS))

    status = 0
    missing = sorted(parse_groups(args.require_groups) - set(by_group), key=lambda g: case_key(g))
    if missing:
        print(f"\nsummarize: FAIL: no cases from group(s) {', '.join(missing)} in the report")
        status = 1

    if failing:
        status = 1
        print(f"\n{len(failing)} failing case(s): {' '.join(c for c, _ in failing)}")
        for case_id, why in failing[: args.max_details]:
            e = cases[case_id]
            print(f"\n[{case_id}] {'; '.join(why)}")
            detail = {}
            path = os.path.join(report_dir, e.get("reportfile", ""))
            try:
                with open(path, encoding="utf-8") as f:
                    detail = json.load(f)
            except (OSError, ValueError) as err:
                print(f"  (no per-case report: {err})")
            for label, key in (("description", "description"), ("expectation", "expectation"),
                               ("result", "result"), ("close result", "resultClose")):
                if detail.get(key):
                    print(f"  {label}: {short(detail[key], 300)}")
            if detail:
                print(f"  server close code/reason: {detail.get('remoteCloseCode')} "
                      f"{short(detail.get('remoteCloseReason') or '', 80)!r}; "
                      f"kosoku sent {detail.get('localCloseCode')}; clean={detail.get('wasClean')}"
                      f"{'' if detail.get('wasClean') else ' (' + str(detail.get('wasNotCleanReason')) + ')'}; "
                      f"closedByKosoku={detail.get('closedByMe')} droppedByKosoku={detail.get('droppedByMe')} "
                      f"serverDropTimeout={detail.get('wasServerConnectionDropTimeout')}")
                print(f"  expected close: {short(detail.get('expectedClose'))}")
                print(f"  received: {short(detail.get('received'))}")
                print(f"  expected: {short(detail.get('expected'))}")
            print(f"  report: {path}")
        if len(failing) > args.max_details:
            print(f"\n... {len(failing) - args.max_details} more failing case(s), see the reports")

    print()
    if status:
        print("summarize: FAIL")
    else:
        print("summarize: OK (no FAILED behaviour or close behaviour"
              f"{'; UNIMPLEMENTED only in groups ' + ','.join(sorted(allow_unimpl, key=case_key)) if all_b.get('UNIMPLEMENTED') else ''})")
    return status


if __name__ == "__main__":
    sys.exit(main())
