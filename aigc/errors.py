"""The one exception type for a user's mistake: the CLI prints its message and exits 2; and what a message may show."""

import re


class UserError(Exception):
    """A mistake the user can fix (bad path, bad CSV, bad config key...).

    The message must name the file, row or key and say what to do.
    """


def first_rows(rows, limit=10):
    """'a, b, c (and 7 more)' for error messages that list offending rows."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")


def short(text, limit=40) -> str:
    """repr() of at most `limit` characters of `text`: a message quotes bad content, never all of it
    (a 2 GB "column name" is one line of a hostile file)."""
    text = str(text)
    return repr(text[:limit]) + (f"... ({len(text):,} characters)" if len(text) > limit else "")


def mask_uri(text: str) -> str:
    """A URI, or a message quoting URLs, with every scheme://user:password@ as scheme://***@."""
    return re.sub(r"://[^/\s@]+@", "://***@", text)
