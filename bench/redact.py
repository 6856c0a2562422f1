"""Credential scrubber cost per MiB, on adversarial and on ordinary text.

    python bench/redact.py [--mib 1] [--repeats 3] [--only NAME] [--clock wall|cpu]
    python bench/redact.py --precheck   # maybe_sensitive on small and 100 KB clean text

Each input is about --mib MiB. Adversarial inputs are built to make a backtracking regex
go quadratic: a prefix that starts a match repeated with nothing to complete it (per
family in tooltrail/secret_rules.toml: its sample cut short, and its first marker alone),
``-eyJ`` repeated (issue 14: 100 KB took 1.7 s), long base64-ish runs, long key=value
chains, and JSON nested thousands deep. Ordinary inputs: prose and tool-call JSON. Target
from issue 14: <= 50 ms/MiB on adversarial text.

``--clock cpu`` times this process's CPU time instead of wall time: on a machine shared
with other work, wall time also counts the waits for a core (2-3x at a load of 6 on 2
cores). Figures and how they were taken: docs/ARCHITECTURE.md, "The credential scrubber".
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, timed, tool_attributes

from tooltrail.redact import RULES, Redactor

MIB = 1 << 20


def repeat_to(unit: str, size: int) -> str:
    return (unit * (size // max(len(unit), 1) + 1))[:size]


def adversarial(size: int) -> dict[str, str]:
    rng = random.Random(14)
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    inputs = {
        "-eyJ repeated": repeat_to("-eyJ", size),
        "eyJ.eyJ repeated": repeat_to("eyJabcdefgh.", size),
        "base64 run": "".join(rng.choice(b64) for _ in range(size)),
        "quoted base64 runs": repeat_to(
            '"' + "".join(rng.choice(b64) for _ in range(60)) + '",', size
        ),
        "key=value chain": repeat_to("password=token=secret=", size),
        "key: spaces": repeat_to("token" + " " * 40, size),
        "--password flags": repeat_to("--password ", size),
        "url ://a:b": repeat_to("://a:b", size),
        "url no @": "https://user:" + repeat_to("pa/ss", size),
        "bearer spaces": repeat_to("Bearer ", size),
        "BEGIN no END": repeat_to("-----BEGIN RSA PRIVATE KEY-----x", size),
        "BEGIN letters": "-----BEGIN " + repeat_to("A ", size),
        "quote no close": repeat_to('token="' + "x" * 30 + "\n", size),
        # Quoted names in text (a reason or a repr quoting arguments): every quote starts a
        # name, every name is followed by a value, values never close or hold escapes.
        "quoted names, values": repeat_to('["--password", "token", ', size),
        "quoted pairs": repeat_to("['X-Api-Key', 'v'], ", size),
        "quoted value no close": repeat_to('"password": "' + "x" * 30 + "\n", size),
        "quoted escapes": '"token": "' + repeat_to('\\"a\\", ', size),
        "quotes and names": repeat_to("'key'", size),
    }
    for rule in RULES:
        cut = rule.sample[: max(len(rule.sample) - 2, 1)]
        inputs[f"{rule.id}: sample cut short"] = repeat_to(cut + " ", size)
        inputs[f"{rule.id}: marker"] = repeat_to(rule.markers[0], size)
    inputs["every family's marker"] = repeat_to("".join(r.markers[0] for r in RULES), size)
    inputs["every family's cut sample"] = repeat_to(" ".join(r.sample[:-2] for r in RULES), size)
    return inputs


def ordinary(size: int) -> dict[str, str]:
    prose = (
        "The payments service retries a failed charge three times, then files a ticket "
        "for the on-call engineer; see the runbook in docs/payments/retries.md. "
    )
    calls = "\n".join(json.dumps(tool_attributes(i)) for i in range(size // 600 + 1))
    return {"prose": repeat_to(prose, size), "tool-call JSON": calls[:size]}


def deep_json(size: int) -> str:
    depth = (size - 20) // 2
    return '{"token": ' + "[" * depth + "]" * depth + "}"


def token_keys(size: int) -> str:
    """A JSON object whose keys are all tokens (a token-indexed map): each scrubbed key
    must be told apart from the others (``#2``, ``#3``...) without re-counting."""
    n = size // 60
    return json.dumps({f"ghp_{i:036d}": i for i in range(n)})


def precheck(repeats: int) -> None:
    """The pre-check every landed string pays: maybe_sensitive on clean text."""
    r = Redactor()
    small = "The payments service retries a failed charge three times."
    big = repeat_to(ordinary(100_000)["prose"], 100_000)
    for label, text, number in (("57 B", small, 200_000), ("100 KB", big, 200)):
        assert not r.maybe_sensitive(text)
        best = best_of(repeats, lambda t=text, n=number: _loop(r.maybe_sensitive, t, n)) / number
        print(f"maybe_sensitive, clean text of {label:>6}: {best * 1e6:9.3f} us")


def _loop(fn: Callable[[str], object], text: str, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn(text)
    return time.perf_counter() - start


def cpu_timed(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


CLOCKS: dict[str, Callable[[Callable[[], object]], float]] = {"wall": timed, "cpu": cpu_timed}
CLOCK = [timed]  # set by --clock


def ms_per_mib(fn: Callable[[], object], size: int, repeats: int) -> float:
    return best_of(repeats, lambda: CLOCK[0](fn)) * 1000 * MIB / size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=float, default=1.0, help="size of each input")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="run only inputs whose name contains this")
    ap.add_argument("--precheck", action="store_true", help="time maybe_sensitive only")
    ap.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="wall time or process CPU time"
    )
    args = ap.parse_args()
    CLOCK[0] = CLOCKS[args.clock]
    if args.precheck:
        precheck(args.repeats)
        return
    size = int(args.mib * MIB)
    r = Redactor()

    rows: list[tuple[str, str, float]] = []
    groups = (("adversarial", adversarial(size)), ("ordinary", ordinary(size)))
    for group, inputs in groups:
        for name, text in inputs.items():
            if args.only and args.only not in name:
                continue
            rows.append(
                (group, name, ms_per_mib(lambda t=text: r.scrub_text(t), size, args.repeats))
            )
    if not args.only or args.only in "deep JSON":
        doc = deep_json(size)
        rows.append(
            (
                "adversarial",
                "deep JSON (scrub_json)",
                ms_per_mib(lambda: r.scrub_json(doc), size, args.repeats),
            )
        )
        b64 = base64.b64encode(doc.encode()).decode()
        rows.append(
            (
                "adversarial",
                "base64 of deep JSON",
                ms_per_mib(lambda: r.scrub_text(b64), len(b64), args.repeats),
            )
        )

    if not args.only or args.only in "token keys (scrub_json)":
        keyed = token_keys(size)
        rows.append(
            (
                "adversarial",
                "token keys (scrub_json)",
                ms_per_mib(lambda: r.scrub_json(keyed), len(keyed), args.repeats),
            )
        )

    print(f"scrub_text, inputs of {size / MIB:.2f} MiB, best of {args.repeats}, {args.clock} time")
    if not rows:
        return
    width = max(len(name) for _, name, _ in rows)
    for group, name, ms in rows:
        print(f"  {group:<11} {name:<{width}}  {ms:8.1f} ms/MiB")
    worst = max(
        (row for row in rows if row[0] == "adversarial"), key=lambda row: row[2], default=None
    )
    normal = max(
        (row for row in rows if row[0] == "ordinary"), key=lambda row: row[2], default=None
    )
    if worst is not None:
        print(f"worst adversarial: {worst[1]} {worst[2]:.1f} ms/MiB  (target <= 50)")
    if normal is not None:
        print(f"worst ordinary:    {normal[1]} {normal[2]:.1f} ms/MiB")


if __name__ == "__main__":
    main()
