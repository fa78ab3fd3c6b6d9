"""Credentials never leave the process: URLs are masked before they are written to a file, a log
line, an MLflow param or tag, or an artifact.

Why not only ``sqlalchemy.engine.make_url``: it splits ``user:pass@host`` at the *first* ``@`` and
the path at the first ``/``, so a password typed with a raw ``@`` or ``/`` (which a user may do,
and which must not leak either) is cut in two and partly printed. The userinfo of a URL ends at
the *last* ``@`` of its authority, so everything between ``user:`` and that ``@`` is masked; query
parameters that carry secrets (``?password=``) are masked too. Masking is a superset of what any
parser would call the password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MASK = "***"
SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "access_token", "api_key",
                     "apikey", "sslpassword", "sslkey")
# A URL inside free text: scheme://... up to whitespace, a quote or a closing bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"\]\)]+")
_QUERY_SECRET = re.compile(rf"([?&](?:{'|'.join(SECRET_QUERY_KEYS)})=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``postgresql://user:p@ss/w@host/db?password=x`` -> ``postgresql://user:***@host/db?password=***``.

    Strings without ``://`` are returned unchanged; so are URLs without credentials.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    if at != -1 and ":" in rest[:at]:
        rest = f"{rest[:at].split(':', 1)[0]}:{MASK}@{rest[at + 1:]}"
    head, q, query = rest.partition("?")
    if q:  # the pattern anchors on the separator: give the first parameter one
        query = _QUERY_SECRET.sub(_masked_param, "?" + query)[1:]
    return f"{scheme}://{head}{q}{query}"


def _masked_param(m: re.Match) -> str:
    return m.group(1) + MASK


def mask_text(text: str) -> str:
    """Every URL inside ``text`` masked (log lines, override lists, error messages)."""
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)


def mask_tree(obj: Any) -> Any:
    """A copy of a nested config (dicts, lists, strings) with every URL in a string masked."""
    if isinstance(obj, Mapping):
        return {k: mask_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_tree(v) for v in obj]
    if isinstance(obj, str):
        return mask_text(obj)
    return obj


def mask_files(paths: Iterable[Path]) -> list[Path]:
    """Rewrite text files (Hydra's ``config.yaml``, ``hydra.yaml``, ``overrides.yaml``,
    ``multirun.yaml``) with every URL's credentials masked; returns the files changed.

    Hydra writes the command line and the composed config to disk before any kdsweep code runs;
    a password typed into a URL override would stay there otherwise.
    """
    changed = []
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        masked = mask_text(text)
        if masked != text:
            tmp = path.with_name(f".{path.name}.masking")
            tmp.write_text(masked)
            os.replace(tmp, path)
            changed.append(path)
    return changed
