"""A real JWT issuer for tests: an RSA key made with ``cryptography``, tokens signed here (RS256),
and its JWK Set served over HTTP on a loopback address, as Envoy's ``remote_jwks`` fetches it.

    async with JwtIssuer("https://issuer.test") as iss:       # JWKS at iss.jwks_uri
        token = iss.token(sub="alice", claims={"group": "admins"})
        iss.token(sub="x", expires_in=-60)                      # expired
        iss.token(sub="x", signer=iss.other_key)                # signed by a key not in the JWKS
        iss.jwks_fetches                                        # how often the JWKS was served

No JWT library: the token is ``base64url(header).base64url(payload).base64url(signature)`` with an
RSASSA-PKCS1-v1_5 SHA-256 signature (RFC 7515/7518), which is all a JWT is.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.ports import alloc_pod_ip, check_loopback


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def serve_http(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], host: str
                     ) -> tuple[web.ServerRunner, int]:
    """A low-level aiohttp server for ``handler`` on ``host`` (loopback), an ephemeral port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((check_loopback(host), 0))
        sock.setblocking(False)
        port = int(sock.getsockname()[1])
        runner = web.ServerRunner(web.Server(handler, access_log=None), handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            raise
    except BaseException:
        sock.close()
        raise
    return runner, port


def _int(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class JwtIssuer:
    def __init__(self, issuer: str, *, host: str | None = None, kid: str = "test-key-1") -> None:
        self.issuer = issuer
        self.host = check_loopback(host or alloc_pod_ip())
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        #: A key of the same shape that the JWKS does not publish (forged tokens).
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = 0
        self.jwks_fetches = 0
        self._runner: web.ServerRunner | None = None

    @property
    def jwks_uri(self) -> str:
        return f"http://{self.host}:{self.port}/jwks"

    def jwks(self) -> str:
        pub = self.key.public_key().public_numbers()
        key = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": _int(pub.n), "e": _int(pub.e)}
        return json.dumps({"keys": [key]})

    def token(self, sub: str, *, claims: dict[str, Any] | None = None, audience: str | None = None,
              expires_in: int = 3600, signer: rsa.RSAPrivateKey | None = None, issuer: str | None = None) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iss": issuer or self.issuer, "sub": sub, "iat": now, "exp": now + expires_in}
        if expires_in < 0:
            payload["iat"] = now + expires_in - 60
        if audience is not None:
            payload["aud"] = audience
        payload.update(claims or {})
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
        sig = (signer or self.key).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(sig)}"

    async def start(self) -> JwtIssuer:
        async def handle(req: web.BaseRequest) -> web.Response:
            if req.path != "/jwks":
                return web.Response(status=404)
            self.jwks_fetches += 1
            return web.Response(text=self.jwks(), content_type="application/json")

        self._runner, self.port = await serve_http(handle, self.host)
        return self

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> JwtIssuer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
