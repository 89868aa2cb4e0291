"""Trust-domain aliases in authorization principals (istiod's trust-domain bundle).

MeshConfig ``trustDomainAliases`` names domains treated as the mesh's own: a policy principal
``td/ns/foo/sa/bar`` whose trust domain is the mesh's, one of its aliases, or ``cluster.local``
(which always stands for the local domain) is expanded to one principal per domain of the bundle
(the trust domain first, then the aliases), so a peer certified in any of them matches.  This is
applied to ``principals``/``notPrincipals`` and ``source.principal`` conditions, as istiod's
``MigrateTrustDomain`` does; everything else (``*/ns/...``, malformed values, other domains) is
kept as written.  A ``trustDomains``/``notTrustDomains`` value naming a domain of the bundle
stands for all of them (the bundle's ``ExpandTrustDomainAliases``).  Pure functions of their
arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from istiod_lite.model.meshconfig import MeshConfig

#: Istio's ``constants.DefaultClusterLocalDomain``: in a principal it means "the local trust domain".
CLUSTER_LOCAL: Final = "cluster.local"


def bundle_of(mesh_config: MeshConfig | Mapping[str, Any] | None) -> tuple[str, ...]:
    """The trust domain and its aliases (empty: no mesh config, principals are kept as written)."""
    if mesh_config is None:
        return ()
    if isinstance(mesh_config, MeshConfig):
        return mesh_config.trust_domains
    td = str(mesh_config.get("trustDomain") or CLUSTER_LOCAL)
    aliases = [str(a) for a in mesh_config.get("trustDomainAliases") or () if a]
    return tuple(dict.fromkeys((td, *aliases)))


def _suffix_match(value: str, pattern: str) -> bool:
    return pattern.startswith("*") and value.endswith(pattern[1:])


def _prefix_match(value: str, pattern: str) -> bool:
    return pattern.endswith("*") and value.startswith(pattern[:-1])


def _in_bundle(td: str, bundle: tuple[str, ...]) -> bool:
    """Istio's trust-domain ``stringMatch``: exact, ``*``, or a prefix/suffix pattern on either side."""
    return any(td == p or p == "*" or _prefix_match(td, p) or _prefix_match(p, td) or _suffix_match(td, p)
               or _suffix_match(p, td) for p in bundle)


def expand_principal(principal: str, bundle: tuple[str, ...]) -> list[str]:
    """One principal -> the principals it stands for under ``bundle`` (itself when not enforced)."""
    parts = principal.split("/")
    if not bundle or len(parts) != 5 or parts[0] == "*":
        return [principal]
    td = parts[0]
    if not (_in_bundle(td, bundle) or td == CLUSTER_LOCAL):
        return [principal]
    out: list[str] = []
    for domain in bundle:
        new = principal if _suffix_match(domain, td) else "/".join((domain, *parts[1:]))
        if new not in out:
            out.append(new)
    return out


def expand_trust_domains(values: tuple[str, ...], bundle: tuple[str, ...]) -> tuple[str, ...]:
    """``trustDomains`` values: one that names a domain of the bundle stands for all of them
    (istiod's ``ExpandTrustDomainAliases``); duplicates dropped, order kept."""
    out = [d for v in values for d in (bundle if v in bundle else (v,))]
    return tuple(dict.fromkeys(out))


def expand_principals(values: tuple[str, ...], bundle: tuple[str, ...]) -> tuple[str, ...]:
    """Every value expanded (``expand_principal``), in order."""
    if not bundle:
        return values
    return tuple(p for v in values for p in expand_principal(v, bundle))


__all__ = ["CLUSTER_LOCAL", "bundle_of", "expand_principal", "expand_principals", "expand_trust_domains"]
