"""Removing secrets that URLs can carry (user info such as `user:token@`, signed query strings) from text that is
printed or logged."""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(\w+://)[^/\s\"'@]*@")
_URL_QUERY = re.compile(r"(\w+://[^\s\"'?]*)\?[^\s\"']*")


def redact(text: str) -> str:
    """`text` with every URL's user info and query string removed."""
    return _URL_QUERY.sub(r"\1", _URL_USERINFO.sub(r"\1", text))
