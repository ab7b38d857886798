"""Loading drift's Jinja2 templates (the top-level ``templates/`` folder).

The folder ships in the wheel as the package ``audit.templates``; in an
editable install the same name points at the checkout's folder. A user folder
(``DRIFT_TEMPLATES``) may override any built-in template by name.

HTML templates autoescape everything; SQL layout templates do not escape but
use StrictUndefined, and never receive raw values (only SQL that SQLAlchemy
already compiled).

Compiled templates are kept between runs in Jinja's per-user cache folder (a
private folder in the temp dir), one file name pattern per environment, since
the two compile with different settings; a cache that cannot be read or
written only costs the compile (~0.07 s per audit).
"""

from __future__ import annotations

import contextlib
import os
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2


def templates_dir() -> Path:
    """The built-in templates: the checkout's folder when running from one,
    else the copy installed as the package ``audit.templates``."""
    checkout = Path(__file__).resolve().parents[1] / "templates"
    if (checkout / "report.html.j2").is_file() and (checkout / "__init__.py").is_file():
        return checkout
    return Path(str(resources.files("audit.templates")))


def _loader() -> jinja2.BaseLoader:
    loaders: list[jinja2.BaseLoader] = []
    user = os.environ.get("DRIFT_TEMPLATES")
    if user:
        loaders.append(jinja2.FileSystemLoader(user))
    loaders.append(jinja2.FileSystemLoader(str(templates_dir())))
    return jinja2.ChoiceLoader(loaders)


class _QuietBytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's file cache of compiled templates, where any failure means "not cached"."""

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # noqa: BLE001 - a damaged or unreadable cache file: compile again
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _bytecode_cache(kind: str) -> jinja2.BytecodeCache | None:
    """``DRIFT_TEMPLATE_CACHE``: ``off``, or a folder to use instead of Jinja's own."""
    where = os.environ.get("DRIFT_TEMPLATE_CACHE") or None
    if where == "off":
        return None
    try:
        return _QuietBytecodeCache(where, pattern=f"drift-{kind}-%s.cache")
    except (OSError, RuntimeError):  # no safe per-user folder (Jinja checks its owner and mode)
        return None


@cache
def html_environment() -> jinja2.Environment:
    # select_autoescape() would not escape *.j2 files: turn it on explicitly.
    return jinja2.Environment(
        loader=_loader(),
        bytecode_cache=_bytecode_cache("html"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def sql_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=_loader(),
        bytecode_cache=_bytecode_cache("sql"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
