"""The authorization filters of one waypoint chain, assembled in Istio's order and memoised.

Order on an HTTP chain (docs/istio-waypoint-shape.md §2.2): CUSTOM (per provider an RBAC
filter with shadow rules, then ext_authz), ``jwt_authn`` when a RequestAuthentication applies, then
RBAC AUDIT, DENY, ALLOW.  On a TCP chain: CUSTOM (gRPC providers), then network RBAC AUDIT, DENY,
ALLOW; these go before ``tcp_proxy``.

Why the memo: the result for a chain is a function of the policies attached to it (and, for
CUSTOM, of the mesh config and the providers' services).  Policies are compiled once per object
(``rbac.compile_policy``), the attachment index once per AuthorizationPolicy/RequestAuthentication
map, and each chain's filters are rebuilt only when the identity of one of its inputs changes -
so editing one policy rebuilds the chains it attaches to and nothing else.  An unchanged chain
returns the same ``AuthzFilters`` object, which a caller can use in its own memo keys.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from istiod_lite.model import ConfigSnapshot
from istiod_lite.model.core import Service
from istiod_lite.model.gateway import Gateway
from istiod_lite.model.meshconfig import MeshConfig
from istiod_lite.model.networking import ServiceEntry
from istiod_lite.model.security import AuthorizationPolicy, RequestAuthentication
from istiod_lite.translator.authz import attach, extauthz, jwt, rbac, trustdomain
from istiod_lite.translator.authz.attach import DEFAULT_ROOT_NAMESPACE, WAYPOINT_CLASS, target_kind
from istiod_lite.translator.authz.extauthz import ClusterRequest, Providers
from istiod_lite.translator.authz.matchers import DEFAULT_LIMITS, Limits
from istiod_lite.translator.authz.rbac import HttpFilter, NetworkFilter
from istiod_lite.translator.binding.waypoints import WaypointRef
from istiod_lite.translator.core import tables

_MAX_CHAINS: Final = 100_000
#: The mesh config as the translator takes it: typed, or Istio's raw YAML mapping.
MeshConfigLike = MeshConfig | Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class AuthzFilters:
    """A chain's authorization filters (shared protos: treat as read-only).

    ``http`` goes into the HCM before the other HTTP filters (``inbound.http_chain(authz=...)``),
    ``tcp`` in front of ``tcp_proxy``; ``clusters`` must exist for them to work (ext_authz
    services, remote JWKS); ``problems`` says what failed closed or was ignored, and why."""

    http: tuple[HttpFilter, ...] = ()
    tcp: tuple[NetworkFilter, ...] = ()
    #: Each filter's role in the chain (``deny``, ``jwt``, ``custom-<provider>-rbac``...), unique
    #: per list: the filter's ECDS slot is named after it (``authz.discovery``).
    http_roles: tuple[str, ...] = ()
    tcp_roles: tuple[str, ...] = ()
    clusters: tuple[ClusterRequest, ...] = ()
    problems: tuple[str, ...] = ()
    #: The config objects this result was computed from (identity compared by the memo).
    inputs: tuple[object, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.http or self.tcp)


EMPTY: Final = AuthzFilters()


class AuthzTranslator:
    """Authorization for waypoint chains under one set of settings, with a per-chain memo.

    ``mesh_config`` is the typed ``MeshConfig`` (or a raw mapping in Istio's YAML spelling; only
    ``extensionProviders`` is read: the root namespace is its own argument);
    ``limits`` says what the proxies accept (regex program size); ``multiple_custom_providers`` is
    Istio's ``PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS``.  Thread-safe."""

    def __init__(self, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE, mesh_config: MeshConfigLike | None = None,
                 limits: Limits = DEFAULT_LIMITS, multiple_custom_providers: bool = False) -> None:
        self.root_namespace = root_namespace
        self.mesh_config = mesh_config
        self.limits = limits
        #: The trust domain and its aliases principals are expanded to (istiod's trust-domain bundle).
        self.bundle = trustdomain.bundle_of(mesh_config)
        self.multiple_custom_providers = multiple_custom_providers
        self._lock = threading.Lock()
        #: chain key -> (the indexes it was checked against, its target keys, its filters)
        self._chains: OrderedDict[tuple[str, str, str, WaypointRef],
                                  tuple[tuple[object, ...], tuple[tuple[str, str, str], ...], AuthzFilters]] = (
            OrderedDict())
        self._last_diff: tuple[object, object, frozenset[tuple[str, str, str]]] | None = None
        self._providers: tuple[tuple[object, ...], Providers] | None = None
        self._diffs: OrderedDict[tuple[int, int], tuple[object, object, frozenset[tuple[str, str, str]]]] = (
            OrderedDict())
        #: The last snapshot's attachment indexes; the snapshot held weakly (it holds this translator).
        self._indexes: tuple[weakref.ref[ConfigSnapshot], attach.AttachIndex[AuthorizationPolicy],
                             attach.AttachIndex[RequestAuthentication]] | None = None

    # --- public ------------------------------------------------------------------------------------

    def for_service(self, snapshot: ConfigSnapshot, waypoint: WaypointRef, namespace: str, name: str,
                    kind: str = "Service") -> AuthzFilters:
        """Filters for the chains of one service (``kind`` ``Service`` or ``ServiceEntry``)."""
        key = (kind, namespace, name, waypoint)
        ap_idx, ra_idx = self._indexes_of(snapshot)
        fast = self._unchanged(snapshot, key, ap_idx, ra_idx)
        if fast is not None:
            return fast
        root = self.root_namespace
        aps = attach.for_service(ap_idx, kind, namespace, name, waypoint.namespace, waypoint.name, root)
        ras = attach.for_service(ra_idx, kind, namespace, name, waypoint.namespace, waypoint.name, root)
        return self._chain(snapshot, key, (ap_idx, ra_idx), aps, ras)

    def for_direct(self, snapshot: ConfigSnapshot, waypoint: WaypointRef) -> AuthzFilters:
        """Filters for ``direct-http``/``direct-tcp`` (Gateway/GatewayClass-targeted policies only)."""
        key = ("", "", "", waypoint)
        ap_idx, ra_idx = self._indexes_of(snapshot)
        fast = self._unchanged(snapshot, key, ap_idx, ra_idx)
        if fast is not None:
            return fast
        aps = attach.for_waypoint(ap_idx, waypoint.namespace, waypoint.name, self.root_namespace)
        ras = attach.for_waypoint(ra_idx, waypoint.namespace, waypoint.name, self.root_namespace)
        return self._chain(snapshot, key, (ap_idx, ra_idx), aps, ras)

    def problems(self, snapshot: ConfigSnapshot) -> list[str]:
        """Everything about authorization config a waypoint will not enforce as written (sorted)."""
        out: list[str] = []
        for kind, index in (("AuthorizationPolicy", attach.ap_index(snapshot)),
                            ("RequestAuthentication", attach.ra_index(snapshot))):
            for pol in index.untargeted:
                what = f"{kind} {pol.namespace}/{pol.name}"
                if pol.spec.selector is not None:
                    out.append(f"{what}: selects workloads (spec.selector), which waypoints do not enforce "
                               "(ztunnel enforces its L4 part); use spec.targetRefs to apply it on a waypoint")
                else:
                    out.append(f"{what}: has no spec.targetRefs (namespace-wide), which waypoints do not enforce "
                               "(ztunnel enforces its L4 part); use spec.targetRefs to apply it on a waypoint")
        targeted_aps: dict[tuple[str, str], AuthorizationPolicy] = {}
        targeted_ras: dict[tuple[str, str], RequestAuthentication] = {}
        for pol in snapshot.of_kind(AuthorizationPolicy):
            if pol.spec.targets:
                targeted_aps[(pol.namespace, pol.name)] = pol
                out += self._target_problems(snapshot, "AuthorizationPolicy", pol)
        for ra in snapshot.of_kind(RequestAuthentication):
            if ra.spec.targets:
                targeted_ras[(ra.namespace, ra.name)] = ra
                out += self._target_problems(snapshot, "RequestAuthentication", ra)
        compiled = [rbac.compile_policy(ap, self.limits, self.bundle) for ap in targeted_aps.values()]
        for cp in compiled:
            out += cp.problems
            # An ALLOW rule dropped, or a DENY/AUDIT rule widened, wherever the policy reaches a TCP chain.
            out += [f"TCP chains: {n}" for n in cp.tcp_notes]
        customs = [cp for cp in compiled if cp.action == "CUSTOM"]
        if customs:
            providers = self._providers_for(snapshot)
            for cp in customs:
                what = f"AuthorizationPolicy {cp.source.namespace}/{cp.source.name}: spec.provider.name"
                provider = providers.by_name.get(cp.provider)
                if provider is None:
                    reason = providers.errors.get(cp.provider, f"extension provider {cp.provider!r} is not defined "
                                                               "in the mesh config")
                    out.append(f"{what}: {reason}; enforced as DENY")
                elif provider.tcp is None:
                    out.append(f"TCP chains: {what}: HTTP provider {cp.provider!r} cannot check TCP traffic; "
                               "TCP connections the policy selects are denied")
            named = sorted({cp.provider for cp in customs})
            if len(named) > 1 and not self.multiple_custom_providers:
                out.append(f"CUSTOM AuthorizationPolicies name several providers ({', '.join(named)}): on a chain "
                           "where more than one applies, every CUSTOM policy is enforced as DENY (Istio's "
                           "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS is off)")
        out += jwt.jwt_filter(list(targeted_ras.values())).problems
        return sorted(dict.fromkeys(out))

    # --- internals ---------------------------------------------------------------------------------

    def _target_problems(self, snapshot: ConfigSnapshot, kind: str,
                         pol: AuthorizationPolicy | RequestAuthentication) -> list[str]:
        out = []
        what = f"{kind} {pol.namespace}/{pol.name}"
        for i, ref in enumerate(pol.spec.targets):
            loc = f"spec.targetRefs[{i}]" if pol.spec.target_refs else "spec.targetRef"
            tk = target_kind(ref)
            if tk == "GatewayClass":
                if ref.name != WAYPOINT_CLASS:
                    out.append(f"{what}: {loc}: GatewayClass {ref.name!r} is not {WAYPOINT_CLASS!r}; ignored")
                elif pol.namespace != self.root_namespace:
                    out.append(f"{what}: {loc}: GatewayClass targets apply only from the root namespace "
                               f"{self.root_namespace!r}; ignored")
            elif tk == "Gateway":
                gw = snapshot.get(Gateway, pol.namespace, ref.name)
                if gw is None or gw.spec.gateway_class_name != WAYPOINT_CLASS:
                    out.append(f"{what}: {loc}: Gateway {pol.namespace}/{ref.name} is not a waypoint; "
                               "nothing enforces this policy")
            elif tk == "Service" and snapshot.get(Service, pol.namespace, ref.name) is None:
                out.append(f"{what}: {loc}: Service {pol.namespace}/{ref.name} does not exist")
            elif tk == "ServiceEntry" and snapshot.get(ServiceEntry, pol.namespace, ref.name) is None:
                out.append(f"{what}: {loc}: ServiceEntry {pol.namespace}/{ref.name} does not exist")
        return out

    def _indexes_of(self, snapshot: ConfigSnapshot) -> tuple[attach.AttachIndex[AuthorizationPolicy],
                                                             attach.AttachIndex[RequestAuthentication]]:
        """The attachment indexes, looked up once per snapshot object (every chain asks)."""
        held = self._indexes
        if held is not None and held[0]() is snapshot:
            return held[1], held[2]
        ap_idx, ra_idx = attach.ap_index(snapshot), attach.ra_index(snapshot)
        self._indexes = (weakref.ref(snapshot), ap_idx, ra_idx)
        return ap_idx, ra_idx

    def _unchanged(self, snapshot: ConfigSnapshot, key: tuple[str, str, str, WaypointRef],
                   ap_idx: object, ra_idx: object) -> AuthzFilters | None:
        """The held result if neither index changed (nor, for CUSTOM chains, the providers): the
        common case, where re-deriving the attachments would only find the same policies."""
        with self._lock:
            held = self._chains.get(key)
        if held is None:
            return None
        (old_ap, old_ra), targets, out = held
        if old_ap is not ap_idx or old_ra is not ra_idx:
            # An index changed: the chain is unchanged unless one of its targets is among those
            # whose policies differ (one edit touches one or two targets of the whole mesh).
            for old, new in ((old_ap, ap_idx), (old_ra, ra_idx)):
                if old is not new and not self._diff(old, new).isdisjoint(targets):
                    return None
        providers = out.inputs[-1] if out.inputs else None
        if providers is not None and self._providers_for(snapshot) is not providers:
            return None
        if old_ap is not ap_idx or old_ra is not ra_idx:
            with self._lock:
                self._chains[key] = ((ap_idx, ra_idx), targets, out)
        return out

    def _diff(self, old: Any, new: Any) -> frozenset[tuple[str, str, str]]:
        """``attach.changed_targets`` once per pair of index objects (all chains ask for the same pair)."""
        last = self._last_diff
        if last is not None and last[0] is old and last[1] is new:
            return last[2]
        k = (id(old), id(new))
        with self._lock:
            hit = self._diffs.get(k)
        if hit is not None and hit[0] is old and hit[1] is new:
            self._last_diff = hit
            return hit[2]
        diff = attach.changed_targets(old, new)
        self._last_diff = (old, new, diff)
        with self._lock:
            self._diffs[k] = (old, new, diff)
            while len(self._diffs) > 8:
                self._diffs.popitem(last=False)
        return diff

    def _providers_for(self, snapshot: ConfigSnapshot) -> Providers:
        """The mesh config's providers against this snapshot's services (re-resolved only when the
        mesh config object or the Service/ServiceEntry maps change)."""
        key = (self.mesh_config, snapshot.by_kind.get("Service"), snapshot.by_kind.get("ServiceEntry"))
        with self._lock:
            held = self._providers
        if held is not None and all(a is b for a, b in zip(held[0], key, strict=True)):
            return held[1]
        providers = extauthz.parse_providers(snapshot, self.mesh_config)
        with self._lock:
            self._providers = (key, providers)
        return providers

    def _chain(self, snapshot: ConfigSnapshot, key: tuple[str, str, str, WaypointRef], indexes: tuple[object, ...],
               aps: tuple[AuthorizationPolicy, ...], ras: tuple[RequestAuthentication, ...]) -> AuthzFilters:
        providers = (self._providers_for(snapshot)
                     if any(ap.spec.action == "CUSTOM" for ap in aps) else None)
        inputs: tuple[object, ...] = (*aps, None, *ras, None, providers)
        with self._lock:
            held = self._chains.get(key)
        if held is not None and len(held[2].inputs) == len(inputs) and all(
                a is b for a, b in zip(held[2].inputs, inputs, strict=True)):
            out = held[2]
        elif not aps and not ras:
            out = EMPTY
        else:
            out = self._build(aps, ras, providers, inputs)
        targets = attach.chain_targets(*key[:3], key[3].namespace, key[3].name, self.root_namespace)
        with self._lock:
            self._chains[key] = (indexes, targets, out)
            self._chains.move_to_end(key)
            while len(self._chains) > _MAX_CHAINS:
                self._chains.popitem(last=False)
        return out

    def _build(self, aps: tuple[AuthorizationPolicy, ...], ras: tuple[RequestAuthentication, ...],
               providers: Providers | None, inputs: tuple[object, ...]) -> AuthzFilters:
        compiled = [rbac.compile_policy(ap, self.limits, self.bundle) for ap in aps]
        http: list[HttpFilter] = []
        tcp: list[NetworkFilter] = []
        http_roles: list[str] = []
        tcp_roles: list[str] = []
        clusters: list[ClusterRequest] = []
        problems = [p for cp in compiled for p in cp.problems]
        problems += [f"TCP chains: {n}" for cp in compiled for n in cp.tcp_notes]
        customs = [cp for cp in compiled if cp.action == "CUSTOM"]
        if customs:
            assert providers is not None
            custom = extauthz.custom_filters(customs, providers, multiple_providers=self.multiple_custom_providers)
            http += custom.http
            tcp += custom.tcp
            http_roles += custom.http_roles
            tcp_roles += custom.tcp_roles
            clusters += custom.clusters
            problems += custom.problems
        auth = jwt.jwt_filter(ras)
        if auth.filter is not None:
            http.append(auth.filter)
            http_roles.append("jwt")
            clusters += auth.clusters
            problems += auth.problems
        enforcing_http, enforcing_tcp, roles = rbac.enforcing_filters(compiled)
        http += enforcing_http
        tcp += enforcing_tcp
        http_roles += roles
        tcp_roles += roles
        return AuthzFilters(http=tuple(http), tcp=tuple(tcp), http_roles=tuple(http_roles),
                            tcp_roles=tuple(tcp_roles), clusters=tuple(dict.fromkeys(clusters)),
                            problems=tuple(dict.fromkeys(problems)), inputs=inputs)


class AuthzTranslators:
    """The shared ``AuthzTranslator`` per settings (the mesh config compared by identity).

    Kept in the snapshot (``tables.AUTHZ_TRANSLATORS``) and handed from each snapshot to the one
    built from it, so a chain's memo lives as long as the config lineage it serves and no longer;
    two unrelated snapshots share nothing.  Thread-safe."""

    #: Callers passing a fresh mesh config each time must not grow it without bound.
    MAX_SETTINGS: Final = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_settings: dict[tuple[object, ...], AuthzTranslator] = {}

    def get(self, *, root_namespace: str | None = None, mesh_config: MeshConfigLike | None = None,
            limits: Limits = DEFAULT_LIMITS, multiple_custom_providers: bool = False) -> AuthzTranslator:
        """``root_namespace`` None: the typed mesh config's ``rootNamespace``, else ``istio-system``."""
        if root_namespace is None:
            root_namespace = (mesh_config.root_namespace if isinstance(mesh_config, MeshConfig)
                              else DEFAULT_ROOT_NAMESPACE)
        key = (root_namespace, id(mesh_config), limits, multiple_custom_providers)
        with self._lock:
            t = self._by_settings.get(key)
            if t is None or t.mesh_config is not mesh_config:
                if len(self._by_settings) >= self.MAX_SETTINGS:
                    self._by_settings.clear()
                t = self._by_settings[key] = AuthzTranslator(
                    root_namespace=root_namespace, mesh_config=mesh_config, limits=limits,
                    multiple_custom_providers=multiple_custom_providers)
            return t


@tables.AUTHZ_TRANSLATORS.computed_by
def _new_translators(_snapshot: ConfigSnapshot) -> AuthzTranslators:
    return AuthzTranslators()


def translator_for(snapshot: ConfigSnapshot, *, root_namespace: str | None = None,
                   mesh_config: MeshConfigLike | None = None, limits: Limits = DEFAULT_LIMITS,
                   multiple_custom_providers: bool = False) -> AuthzTranslator:
    """The translator ``snapshot``'s lineage shares for these settings (``AuthzTranslators.get``)."""
    return tables.AUTHZ_TRANSLATORS.of(snapshot).get(
        root_namespace=root_namespace, mesh_config=mesh_config, limits=limits,
        multiple_custom_providers=multiple_custom_providers)


def authz_for_service(snapshot: ConfigSnapshot, waypoint: WaypointRef, service_namespace: str, service_name: str, *,
                      root_namespace: str | None = None, kind: str = "Service",
                      mesh_config: MeshConfigLike | None = None, limits: Limits = DEFAULT_LIMITS,
                      multiple_custom_providers: bool = False) -> AuthzFilters:
    """Authorization filters for a per-service chain (``inbound-vip|P|http|H`` / ``...|tcp|H``)."""
    return translator_for(snapshot, root_namespace=root_namespace, mesh_config=mesh_config, limits=limits,
                          multiple_custom_providers=multiple_custom_providers
                          ).for_service(snapshot, waypoint, service_namespace, service_name, kind)


def authz_for_direct(snapshot: ConfigSnapshot, waypoint: WaypointRef, *, root_namespace: str | None = None,
                     mesh_config: MeshConfigLike | None = None, limits: Limits = DEFAULT_LIMITS,
                     multiple_custom_providers: bool = False) -> AuthzFilters:
    """Authorization filters for ``direct-http``/``direct-tcp``."""
    return translator_for(snapshot, root_namespace=root_namespace, mesh_config=mesh_config, limits=limits,
                          multiple_custom_providers=multiple_custom_providers).for_direct(snapshot, waypoint)


def authz_problems(snapshot: ConfigSnapshot, *, root_namespace: str | None = None,
                   mesh_config: MeshConfigLike | None = None, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Authorization config that waypoints do not enforce as written (for ``validate`` and logs)."""
    return translator_for(snapshot, root_namespace=root_namespace, mesh_config=mesh_config,
                          limits=limits).problems(snapshot)
