"""Bundle references: a full digest, an alias, or a unique digest prefix — resolved the same way everywhere.

The local store (:meth:`rbln_eval.store.store.Store.resolve`) and every remote's index
(:func:`rbln_eval.remotes.base.match_index`) name bundles alike; this is the one reading of a reference.
"""

from __future__ import annotations

from typing import Callable, Iterable

from rbln_eval.util.constants import DIGEST_RE, HEX_RE, MIN_PREFIX
from rbln_eval.errors import AmbiguousReferenceError, BundleNotFoundError


def is_digest(ref: str) -> bool:
    return bool(DIGEST_RE.match(ref))


def match_reference(
    ref: str, digests: Iterable[str], aliased: Callable[[str], list[str]], where: str
) -> str | None:
    """The digest ``ref`` names among ``digests``, or ``None``.

    ``aliased(ref)`` lists the digests an alias ``ref`` points to. A full digest names itself (``None`` if
    absent); then an alias; then a digest prefix of at least :data:`MIN_PREFIX` hex characters. A prefix
    that is too short, or a prefix or alias that names several bundles, raises with ``where`` in the message.
    """
    ref = ref.strip()
    known = set(digests)
    if is_digest(ref):
        return ref if ref in known else None
    named = aliased(ref)
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise AmbiguousReferenceError(f"alias {ref!r} names {len(named)} bundles{where}", "use a digest")
    if HEX_RE.match(ref.lower()):
        if len(ref) < MIN_PREFIX:
            raise BundleNotFoundError(f"digest prefix {ref!r} is too short", f"give at least {MIN_PREFIX} characters")
        matches = sorted(d for d in known if d.startswith(ref.lower()))
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise AmbiguousReferenceError(
                f"digest prefix {ref!r} matches {len(matches)} bundles{where} ({shown})", "give more characters"
            )
        if matches:
            return matches[0]
    return None
