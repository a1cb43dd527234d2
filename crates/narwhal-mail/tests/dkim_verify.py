#!/usr/bin/env python3
"""Verifies the first DKIM-Signature of a message with dkimpy, a DKIM implementation
independent of Narwhal's, for the tests in dkim_*.rs.

Usage: dkim_verify.py MESSAGE_FILE NAME=TXT [NAME=TXT ...]

NAME is `selector._domainkey.domain` and TXT its record (`v=DKIM1; k=...; p=...`): the
records come from the arguments, never from DNS. Prints `pass` and exits 0, or
`fail` with dkimpy's log and exits 1.
"""
import io
import logging
import sys

import dkim


def main():
    records = {}
    for arg in sys.argv[2:]:
        name, _, txt = arg.partition("=")
        records[name.lower().rstrip(".")] = txt.encode()

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.lower().rstrip("."))

    with open(sys.argv[1], "rb") as f:
        message = f.read()
    log = io.StringIO()
    logger = logging.getLogger("dkim-verify")
    logger.addHandler(logging.StreamHandler(log))
    logger.setLevel(logging.DEBUG)
    ok = dkim.verify(message, logger=logger, dnsfunc=dnsfunc)
    print("pass" if ok else "fail\n" + log.getvalue())
    sys.exit(0 if ok else 1)


main()
