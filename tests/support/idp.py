"""A real OIDC identity provider for the tests: oauth2-mock-server 8 (tests/idp) in a Node subprocess.

It serves real OIDC discovery (/.well-known/openid-configuration) and a real JWKS (/jwks, with
`Cache-Control: max-age=<jwks_max_age>`) on 127.0.0.1, signs tokens with keys it generated itself, and
takes orders on control endpoints of the same port (tests/idp/idp.mjs documents them): mint a token,
rotate the signing key, count the discovery and JWKS hits. The npm package is installed on first use
with `npm ci` from tests/idp/package-lock.json, like the other JavaScript test projects.

A pytest fixture (the IdP starts in well under a second; session scope works too, as long as tests
compare `stats()` before and after rather than expect zeros)::

    from collections.abc import Iterator

    from tests.support.idp import MockIdP, needs_idp

    pytestmark = needs_idp

    @pytest.fixture
    def idp() -> Iterator[MockIdP]:
        with MockIdP(jwks_max_age=300) as provider:
            yield provider

    async def test_gateway_takes_idp_tokens(idp: MockIdP, stack) -> None:
        # illustrative: an issuer without JWKS URL makes the gateway use OIDC discovery
        settings = make_settings(stack, jwt_secret="", jwt_issuer=idp.issuer)
        ...
        headers = {"Authorization": f"Bearer {idp.token('alice', scope='upload')}"}
        before = idp.stats()["jwks_requests"]
        ...
        assert idp.stats()["jwks_requests"] - before <= 2

`async with MockIdP() as idp:` works as well. The control calls are synchronous (urllib) and quick;
they only talk to the Node process, so calling them from an async test never waits on the event loop.
"""

from __future__ import annotations

import functools
import json
import os
import select
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

from tests.support.node import NODE, node_requirement, npm_ci
from tests.support.tokens import AUDIENCE

IDP_DIR = Path(__file__).resolve().parent.parent / "idp"
SCRIPT = "idp.mjs"
PACKAGE = "oauth2-mock-server"
START_TIMEOUT = 30.0
CONTROL_TIMEOUT = 10.0

# oauth2-mock-server 8 wants Node ^20.19 (9.x would want 22).
needs_idp = node_requirement("the mock OIDC identity provider (oauth2-mock-server)")


@functools.cache
def install_idp_packages() -> Path:
    """tests/idp/node_modules, pinned by tests/idp/package-lock.json (`npm ci` when missing or stale)."""
    return npm_ci(IDP_DIR, (PACKAGE,))


class IdPError(RuntimeError):
    """The IdP process failed, or a control call was refused (`status` is its HTTP status, 0 if none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class MockIdP:
    """oauth2-mock-server on 127.0.0.1 as a subprocess: `issuer`, `jwks_url`, `token()`, `rotate()`, `stats()`.

    `port` 0 picks a free port; `jwks_max_age` is the JWKS response's `Cache-Control: max-age` (negative:
    no such header); `alg` is the first signing key's algorithm; `audience` is the default `aud` of
    `token()` (the test gateways' AUDIENCE).
    """

    def __init__(self, *, port: int = 0, jwks_max_age: int = 300, alg: str = "RS256",
                 audience: str | list[str] | None = AUDIENCE, start_timeout: float = START_TIMEOUT) -> None:
        self.audience = audience
        self._args = [str(port), f"--jwks-max-age={jwks_max_age}", f"--alg={alg}", "--exit-on-stdin-close"]
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self.info: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> MockIdP:
        """Install tests/idp if needed, start the IdP and wait for its first JSON line."""
        if self._process is not None:
            raise IdPError("the IdP is already started")
        if NODE is None:
            raise IdPError("node is not on PATH: the mock IdP needs Node.js 20.19+")
        install_idp_packages()
        fd, log = tempfile.mkstemp(prefix="mock-idp-", suffix=".log")
        self._log = Path(log)
        with os.fdopen(fd, "wb") as stderr:
            # stdin stays an open pipe: the IdP exits when it closes, i.e. when this process dies.
            self._process = subprocess.Popen([NODE, str(IDP_DIR / SCRIPT), *self._args], cwd=IDP_DIR,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        try:
            self.info = json.loads(self._first_line())
        except BaseException:
            self.stop()
            raise
        return self

    def _first_line(self) -> bytes:
        assert self._process is not None and self._process.stdout is not None
        out = self._process.stdout.fileno()
        deadline = time.monotonic() + self._start_timeout
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IdPError(f"the IdP printed no JSON line within {self._start_timeout:.0f}s{self._log_tail()}")
            ready, _, _ = select.select([out], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(out, 65536)
                if not chunk:
                    self._process.wait(5)
                    raise IdPError(f"the IdP exited ({self._process.returncode}) before it was ready"
                                   f"{self._log_tail()}")
                data += chunk
        return data.split(b"\n", 1)[0]

    def _log_tail(self) -> str:
        if self._log is None or not self._log.is_file():
            return ""
        return f"; its stderr:\n{self._log.read_text(errors='replace')[-3000:]}"

    def stop(self) -> None:
        """Stop the IdP (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> MockIdP:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> MockIdP:
        return self.start()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.stop()

    # -- where it is -----------------------------------------------------------------------------------

    def _info(self, key: str) -> Any:
        if not self.info:
            raise IdPError("the IdP is not started")
        return self.info[key]

    @property
    def issuer(self) -> str:
        """http://127.0.0.1:PORT, the `iss` of its tokens and the `issuer` of its discovery document."""
        return str(self._info("issuer"))

    @property
    def port(self) -> int:
        return int(self._info("port"))

    @property
    def jwks_url(self) -> str:
        return str(self._info("jwks_uri"))

    @property
    def discovery_url(self) -> str:
        return str(self._info("discovery_uri"))

    @property
    def jwks_max_age(self) -> int:
        return int(self._info("jwks_max_age"))

    # -- control ---------------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.issuer}/control/{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT) as response:
                result: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise IdPError(f"{method} /control/{path} -> {error.code}: {detail}", error.code) from None
        return result

    def token(self, sub: str | None = "alice", aud: str | list[str] | EllipsisType | None = ...,
              scope: str | list[str] | None = None, exp_in: float = 300, *, alg: str | None = None,
              kid: str | None = None, **claims: Any) -> str:
        """A JWT signed by the current (newest) key, with iss = `issuer`, iat = now, nbf = now - 10 and
        exp = now + `exp_in` (negative: already expired). `aud` defaults to `audience`; None leaves `sub`,
        `aud` or `scope` out. `claims` are added last and may override iss/iat/nbf/exp; a claim given as
        None is removed (`exp=None`: a token without exp). `alg`: sign with the newest key of that
        algorithm instead; `kid`: put this kid in the header (the signature is still the real key's)."""
        body: dict[str, Any] = {"sub": sub, "aud": self.audience if aud is ... else aud, "scope": scope,
                                "exp_in": exp_in, "claims": claims}
        if alg is not None:
            body["alg"] = alg
        if kid is not None:
            body["kid"] = kid
        return str(self._control("POST", "token", body)["token"])

    def rotate(self, alg: str = "RS256", drop_old: bool = False) -> dict[str, Any]:
        """A new signing key (RS256, PS256, ES256, EdDSA, ...) becomes current; older keys stay in the JWKS
        unless `drop_old`. Returns {"kid": the new kid, "alg", "kids": every kid in the JWKS, oldest first}."""
        return self._control("POST", "rotate", {"alg": alg, "drop_old": drop_old})

    def stats(self) -> dict[str, int]:
        """{"jwks_requests": n, "discovery_requests": n}: GET/HEAD hits since the IdP started."""
        return {key: int(value) for key, value in self._control("GET", "stats").items()}
