"""Where the comparisons are: every secure comparison of a run, by phase, operator and site.

Runs ``crypten-mpcache generate`` or ``bench`` in this process with a recorder around
the comparison protocols' ``less_than_zero_shares`` (the parties are forked from here, so
they inherit it). Party 0 appends one line per comparison (phase, operator kind, call
site, elements) to a file; its dry runs record nothing. Calls and elements do not depend
on the comparison protocol (the operators are the same code), so one run with the cheap
``masked`` comparison gives the census for both; per comparison call the masked protocol
costs 8 online rounds and the dcf one 1, and the dealt bytes follow from the two
protocols' layouts (``dealt_bytes``).

    python benchmarks/comparison_census.py --json results/bench/dcf_census_smollm2.json \
        -- generate --comparison masked --max-new-tokens 3
    python benchmarks/comparison_census.py --json results/bench/dcf_census_llama2-7b-2048.json \
        -- bench --shape llama2-7b --context 2048 --cache full,mpcache --dealer ttp \
        --steps 1 --comparison masked
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import crypten_mpcache  # noqa: F401
from crypten_mpcache.cli import main as cli_main
from crypten_mpcache.runtime import trace
from crypten_mpcache.runtime.cost import CostMeter
from crypten_mpcache.secure.primitives import comparison as masked
from crypten_mpcache.secure.primitives import comparison_dealer, dcf_comparison
from crypten_mpcache.secure.primitives.party import party_rank

MASKED_ROUNDS, DCF_ROUNDS = 8, 1
_ENV = "COMPARISON_CENSUS_DIR"
# Frames that say nothing about which operator asked (the comparison route itself).
_SKIP = ("secure/primitives/", "patches/crypten_comparison", "benchmarks/comparison_census")


def dealt_bytes(n: int) -> dict[str, int]:
    """Dealer bytes of one comparison of n elements, both parties' material, as CrypTen's
    counters count them (8 bytes a word): dcf, party 0's words and party 1's relayed
    correction words per batch of the default bound; masked, party 0's dependent words."""
    batch = dcf_comparison.OfflineConfig().dcf_batch
    layouts = [dcf_comparison.Layout(c) for _, c in dcf_comparison.batches(n, batch)]
    return {"dcf": sum(8 * (layout.party0_words + layout.cw_words) for layout in layouts),
            "masked": 8 * comparison_dealer.Layout(n).dependent_size}


def _where() -> tuple[str, str]:
    """The comparison's call site: our innermost caller outside the comparison route
    (file:function) and the outermost CrypTen method below it (max, relu, lt, ...)."""
    crypten_op = "-"
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace(os.sep, "/")
        if any(skip in path for skip in _SKIP):
            continue
        if "crypten_mpcache" in path:
            return f"{path.rsplit('/', 1)[-1].removesuffix('.py')}:{frame.name}", crypten_op
        if "/crypten/" in path:
            crypten_op = frame.name
    return "?", crypten_op


def _recording(original: Any) -> Any:
    def less_than_zero_shares(share: Any, *args: Any, **kwargs: Any) -> Any:
        meter = CostMeter._active
        if trace.active_recorder() is None and party_rank() == 0 and meter is not None:
            kind = meter._stack[-1].kind if meter._stack else "other"
            line = [time.time(), meter._current_phase, kind, *_where(), share.numel()]
            with open(Path(os.environ[_ENV]) / f"{os.getpid()}.jsonl", "a") as out:
                out.write(json.dumps(line) + "\n")
        return original(share, *args, **kwargs)
    return less_than_zero_shares


def summarize(lines: list[list]) -> dict[str, Any]:
    """Per phase: per (operator kind, site, CrypTen op) the calls, elements, the online
    rounds each protocol spends on them and their dealt bytes; and the calls per size."""
    table: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for phase, kind, site, op, n in lines:
        row = table[phase].setdefault(f"{kind} | {site} | {op}", defaultdict(int))
        row["calls"] += 1
        row["elements"] += n
        row["max_elements"] = max(row["max_elements"], n)
        for protocol, nbytes in dealt_bytes(n).items():
            row[f"{protocol}_dealer_bytes"] += nbytes
    for rows in table.values():
        for row in rows.values():
            row["masked_rounds"] = MASKED_ROUNDS * row["calls"]
            row["dcf_rounds"] = DCF_ROUNDS * row["calls"]
    sizes: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for phase, *_, n in lines:
        sizes[phase][n] += 1
    return {phase: {"sites": {k: dict(v) for k, v in sorted(rows.items())},
                    "sizes": dict(sorted(sizes[phase].items()))}
            for phase, rows in table.items()}


def runs(folder: Path) -> list[dict[str, Any]]:
    """One census per launched run (party 0's process), in the order they started."""
    found = []
    for path in Path(folder).glob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        found.append((lines[0][0], [line[1:] for line in lines]))
    return [{"run": index, "phases": summarize(lines)}
            for index, (_, lines) in enumerate(sorted(found, key=lambda item: item[0]))]


def kind_table(phase: dict[str, Any]) -> list[str]:
    """Markdown rows per operator kind of one phase's census."""
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for key, row in phase["sites"].items():
        kind = key.split(" | ")[0]
        site = key.split(" | ")[1].split(":")[-1]
        label = f"{kind} ({site})"
        for field in ("calls", "elements", "masked_rounds", "dcf_rounds", "dcf_dealer_bytes",
                      "masked_dealer_bytes"):
            kinds[label][field] += row[field]
        kinds[label]["max_elements"] = max(kinds[label]["max_elements"], row["max_elements"])
    rows = ["| operator (site) | calls | elements | largest | rounds masked | rounds dcf | "
            "dcf keys MiB | masked material MiB |", "|---|---|---|---|---|---|---|---|"]
    total: dict[str, int] = defaultdict(int)
    for label, k in sorted(kinds.items()):
        for field, value in k.items():
            total[field] = max(total[field], value) if field == "max_elements" \
                else total[field] + value
        rows.append(_row(label, k))
    rows.append(_row("**all**", total))
    return rows


def _row(label: str, k: dict[str, int]) -> str:
    return (f"| {label} | {k['calls']:,} | {k['elements']:,} | {k['max_elements']:,} | "
            f"{k['masked_rounds']:,} | {k['dcf_rounds']:,} | "
            f"{k['dcf_dealer_bytes'] / 2**20:,.1f} | {k['masked_dealer_bytes'] / 2**20:,.2f} |")


def threshold_table(phase: dict[str, Any], thresholds: list[int]) -> list[str]:
    """dcf for the comparisons of at most T elements, masked above: the online rounds
    saved against all-masked (7 per dcf call) and the dealt bytes it adds."""
    sizes = {int(n): calls for n, calls in phase["sizes"].items()}
    rows = ["| T (elements) | dcf calls | masked calls | rounds saved | dcf keys MiB | "
            "dealer MiB added vs masked |", "|---|---|---|---|---|---|"]
    for t in thresholds:
        small = {n: c for n, c in sizes.items() if n <= t}
        keys = sum(c * dealt_bytes(n)["dcf"] for n, c in small.items())
        replaced = sum(c * dealt_bytes(n)["masked"] for n, c in small.items())
        calls = sum(small.values())
        rows.append(f"| {t:,} | {calls:,} | {sum(sizes.values()) - calls:,} | "
                    f"{(MASKED_ROUNDS - DCF_ROUNDS) * calls:,} | {keys / 2**20:,.1f} | "
                    f"{(keys - replaced) / 2**20:+,.1f} |")
    return rows


def print_report(path: str, phase: str, thresholds: list[int]) -> None:
    """Print the tables of one phase of every run of a census JSON."""
    census = json.loads(Path(path).read_text())
    print(census["command"])
    for run in census["runs"]:
        if phase in run["phases"]:
            print(f"\nrun {run['run']}, {phase}\n")
            print("\n".join(kind_table(run["phases"][phase])))
            print()
            print("\n".join(threshold_table(run["phases"][phase], thresholds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--raw", help="also keep every comparison's record here (a folder)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the crypten-mpcache command and its arguments")
    parser.add_argument("--report", metavar="PHASE",
                        help="print the tables of PHASE from --json (no run)")
    parser.add_argument("--thresholds", default="0,66,126,256,512,1536,2048,4096,32768",
                        help="with --report: element thresholds T of the dcf/masked choice")
    args = parser.parse_args()
    if args.report:
        print_report(args.json, args.report, [int(t) for t in args.thresholds.split(",")])
        return
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    masked.less_than_zero_shares = _recording(masked.less_than_zero_shares)
    dcf_comparison.less_than_zero_shares = _recording(dcf_comparison.less_than_zero_shares)
    with tempfile.TemporaryDirectory(prefix="census-") as temporary:
        folder = Path(args.raw or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[_ENV] = str(folder)
        code = cli_main(command)
        found = runs(folder)
    report = {"command": "crypten-mpcache " + " ".join(command), "exit_code": code,
              "dcf_batch": dcf_comparison.OfflineConfig().dcf_batch, "runs": found}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
