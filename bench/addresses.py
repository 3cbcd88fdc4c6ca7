"""Time to parse one MAIL/RCPT argument: the gateway's RFC 5321 parser
(``smtpgateway.session.addresses``) against the stdlib RFC 5322 parser that aiosmtpd uses,
on the common form and on arguments crafted to be slow, each near the 512-byte
command line limit. Prints microseconds per call (best of five runs).

    .venv/bin/python bench/addresses.py
"""

from __future__ import annotations

import sys
import timeit
from email._header_value_parser import get_addr_spec, get_angle_addr
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smtpgateway.session.addresses import parse_path  # noqa: E402

ARGUMENTS = {
    "common <local@domain> SIZE=": "<first.last+tag@mail.example.com> SIZE=2048",
    "quoted local part": '<"two words"@example.com>',
    "comments": "<" + "(a)" * 160 + "a@example.com>",
    "words and spaces": "<" + "a " * 240 + "@example.com>",
    "bare words": "a" + " a" * 240,
    "many dots": "<" + "a." * 240 + "a@example.com>",
    "source route": "<" + "@a," * 160 + ":a@b>",
    "backslashes in quotes": '<"' + "\\" * 480 + ">",
    "long domain, bad end": "<a@" + "a-" * 240 + ">",
}


def stdlib(arg: str) -> object:
    try:
        return (get_angle_addr if arg.startswith("<") else get_addr_spec)(arg)
    except Exception:
        return None


def per_call_us(parse: object, arg: str) -> float:
    timer = timeit.Timer(lambda: parse(arg))  # type: ignore[operator]
    number, _ = timer.autorange()
    return min(timer.repeat(5, number)) / number * 1e6


def main() -> None:
    print(f"{'argument':30} {'bytes':>5} {'gateway µs':>11} {'stdlib µs':>10} {'a path':>7}")
    for name, arg in ARGUMENTS.items():
        ours, theirs = per_call_us(parse_path, arg), per_call_us(stdlib, arg)
        print(f"{name:30} {len(arg):5d} {ours:11.1f} {theirs:10.1f} {'yes' if parse_path(arg) else 'no':>7}")


if __name__ == "__main__":
    main()
