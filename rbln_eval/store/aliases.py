"""Aliases of the store: human names (``model@rev:tag``) for digests, one small file each under ``refs/``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote

from rbln_eval.errors import BundleNotFoundError, RblnEvalError
from rbln_eval.util.atomic import write_atomic
from rbln_eval.util.constants import DIGEST_RE, HEX_RE


def ref_filename(alias: str) -> str:
    """The file name an alias is stored under."""
    return quote(alias, safe="@:+-_.,=")


class AliasTable:
    """The store's aliases (a mixin of :class:`~rbln_eval.store.store.Store`)."""

    root: Path
    refs_dir: Path

    def read_ref(self, alias: str) -> str | None:
        try:
            digest = (self.refs_dir / ref_filename(alias)).read_text().strip()
        except (OSError, ValueError):
            return None
        return digest if DIGEST_RE.match(digest) else None

    def set_ref(self, alias: str, digest: str) -> None:
        """Point ``alias`` at ``digest`` (atomic replace)."""
        if not alias or alias.strip() != alias or HEX_RE.match(alias) or "\n" in alias:
            raise RblnEvalError(
                f"invalid alias {alias!r}: use a name such as model@revision:tag (not a bare hex string)"
            )
        if self.lookup(digest) is None:
            raise BundleNotFoundError(f"no bundle {digest[:12]} in store {self.root}")
        self.ensure_writable()
        write_atomic(self.refs_dir / ref_filename(alias), digest + "\n")

    def refs(self) -> dict[str, str]:
        if not self.refs_dir.is_dir():
            return {}
        out: dict[str, str] = {}
        for path in sorted(self.refs_dir.iterdir()):
            if path.name.startswith("."):
                continue
            digest = self.read_ref(unquote(path.name))
            if digest is not None:
                out[unquote(path.name)] = digest
        return out

    def remove_ref(self, alias: str) -> bool:
        path = self.refs_dir / ref_filename(alias)
        if not path.exists():
            return False
        path.unlink()
        return True
