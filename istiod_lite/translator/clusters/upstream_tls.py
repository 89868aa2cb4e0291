"""TLS a waypoint originates to an application (DestinationRule ``tls`` SIMPLE/MUTUAL).

Facts: docs/istio-waypoint-shape.md §3 (``buildWaypointTLSContext``, ``constructUpstreamTLS``,
``setAutoSniAndAutoSanValidation``).  ``DISABLE`` and ``ISTIO_MUTUAL`` produce nothing: HBONE
already carries mTLS, and the application TLS built here runs *inside* the tunnel.

Credentials: as in Istio, files named by the DestinationRule (``caCertificates``,
``clientCertificate``/``privateKey``) are not read by Envoy directly but requested over SDS as
``file-root:<ca>`` and ``file-cert:<cert>~<key>`` from the agent (cluster ``sds-grpc``), which reads
and watches them; no ``caCertificates`` means the system roots (``file-root:system``).
``credentialName`` becomes Istio's ADS secrets ``kubernetes://<name>`` / ``...-cacert``; istiod-lite
does not serve those yet, so such a cluster stays unready (fails closed; ``config_warnings`` says so).
"""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from istiod_lite.model.networking import ClientTLSSettings
from istiod_lite.translator.shape.hbone import sds_config

TLS_SOCKET = "envoy.transport_sockets.tls"
CREDENTIAL_PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"


def _ads_sds() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def _secret(name: str, ads: bool = False) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=_ads_sds() if ads else sds_config())


def upstream_tls_context(tls: ClientTLSSettings, h2: bool) -> tls_pb2.UpstreamTlsContext:
    """``constructUpstreamTLS``: TLS 1.2-1.3, SNI as configured, client certificate for MUTUAL,
    peer validation against the CA and the exact SANs unless ``insecureSkipVerify``."""
    ctx = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    cc = ctx.common_tls_context
    cc.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    cc.tls_params.tls_maximum_protocol_version = common_pb2.TlsParameters.TLSv1_3
    insecure = bool(tls.insecure_skip_verify)
    if tls.credential_name:
        cred = tls.credential_name if "://" in tls.credential_name else CREDENTIAL_PREFIX + tls.credential_name
        if tls.mode == "MUTUAL":
            cc.tls_certificate_sds_secret_configs.append(_secret(cred, ads=True))
        if not insecure:
            combined = cc.combined_validation_context
            _sans(combined.default_validation_context, tls.subject_alt_names)
            combined.validation_context_sds_secret_config.CopyFrom(_secret(cred + CA_SUFFIX, ads=True))
    else:
        if tls.mode == "MUTUAL":
            cc.tls_certificate_sds_secret_configs.append(
                _secret(f"file-cert:{tls.client_certificate}~{tls.private_key}"))
        if insecure:
            cc.validation_context.SetInParent()  # no peer validation at all
        else:
            combined = cc.combined_validation_context
            _sans(combined.default_validation_context, tls.subject_alt_names)
            if tls.ca_crl:
                combined.default_validation_context.crl.filename = tls.ca_crl
            combined.validation_context_sds_secret_config.CopyFrom(
                _secret(f"file-root:{tls.ca_certificates or 'system'}"))
    if h2:
        cc.alpn_protocols.append("h2")
    return ctx


def _sans(vc: common_pb2.CertificateValidationContext, sans: tuple[str, ...]) -> None:
    # Istio's untyped matcher: a SAN of any type (DNS, URI, IP) equal to the value.
    vc.SetInParent()
    for san in sans:
        vc.match_subject_alt_names.append(string_pb2.StringMatcher(exact=san))


def auto_sni_san(tls: ClientTLSSettings) -> tuple[bool, bool]:
    """``setAutoSniAndAutoSanValidation``: SNI from the request's host when none is configured;
    then also verify the certificate against it, unless SANs are given or verification is off."""
    auto_sni = not tls.sni
    auto_san = auto_sni and not tls.subject_alt_names and not tls.insecure_skip_verify
    return auto_sni, auto_san
