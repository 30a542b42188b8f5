"""Joining a Ray cluster that has token authentication on (Ray >= 2.52: `ray start --head` turns it on when
RAY_AUTH_MODE=token is set or a token already exists, and Ray plans it for every cluster).

Ray reads the token itself (RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token), but
a process joining a cluster by address only sends it when RAY_AUTH_MODE=token is set, and a refused `ray.init`
retries for a minute before it fails. So before joining, ask the cluster once without a token whether it wants one,
and once with ours whether it takes it: a refusal is then one line naming where the token came from, in
milliseconds. The token itself is never put in a message, a repr or a log line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
PROBE_TIMEOUT_S = 10.0
# What Ray's C++ client and gRPC server say when a token is missing or wrong (gcs_client.cc, the interceptors).
_AUTH_MARKERS = ("InvalidAuthToken", "UNAUTHENTICATED", "Unauthenticated", "authentication token")
_HOW_TO_GET_IT = "on the head node, `ray get-auth-token` prints it"


class ClusterAuthError(ConnectionError):
    """The cluster wants a token and has none, or refused ours. A ConnectionError, so that callers which report an
    unreachable cluster report this too."""


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    source: str  # where it came from, for messages: "RAY_AUTH_TOKEN" or a file's path

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


# A probe asks the cluster one cheap question with this token (None: no token): True it answered, False it refused
# for authentication, None it could not tell (unreachable, another error): the caller then leaves it to Ray.
Probe = Callable[["Token | None"], "bool | None"]


def find_token(environ=os.environ, home: Path | None = None) -> Token | None:
    """The token Ray itself would use, in Ray's order; None when there is none."""
    if environ.get(TOKEN_ENV, "").strip():
        return Token(environ[TOKEN_ENV].strip(), TOKEN_ENV)
    if environ.get(TOKEN_PATH_ENV):
        # Ray refuses to start or join when this file is missing or empty, rather than fall back to the default.
        return _read_token(Path(environ[TOKEN_PATH_ENV]), f"{TOKEN_PATH_ENV}={environ[TOKEN_PATH_ENV]}")
    default = (home or Path.home()) / ".ray" / "auth_token"
    return _read_token(default, str(default)) if default.exists() else None


def _read_token(path: Path, source: str) -> Token:
    try:
        value = path.read_text().strip()
    except OSError as e:
        raise ClusterAuthError(f"cannot read the Ray token file {source}: {e.strerror}; point {TOKEN_PATH_ENV} at "
                               f"the file holding the cluster's token, or unset it") from None
    if not value:
        raise ClusterAuthError(f"the Ray token file {source} is empty: put the cluster's token in it "
                               f"({_HOW_TO_GET_IT})")
    return Token(value, source)


def check_access(where: str, probe: Probe) -> Token | None:
    """The token to send to `where`, None when it needs none (or cannot be asked); ClusterAuthError when it wants a
    token and there is none, or refuses ours."""
    if probe(None) is not False:
        return None
    token = find_token()
    if token is None:
        raise ClusterAuthError(
            f"{where} requires a token (Ray token authentication) and none was found: set {TOKEN_ENV}, or "
            f"{TOKEN_PATH_ENV} to a file holding it, or copy it to ~/.ray/auth_token ({_HOW_TO_GET_IT})")
    if probe(token) is False:
        raise ClusterAuthError(f"{where} refused the token from {token.source} (Ray token authentication): "
                               f"{_fix(token)}")
    return token


def _fix(token: Token) -> str:
    if token.source == TOKEN_ENV:
        return (f"set {TOKEN_ENV} to the cluster's token ({_HOW_TO_GET_IT}), or unset it to use "
                f"{TOKEN_PATH_ENV} or ~/.ray/auth_token")
    return f"put the cluster's token in that file ({_HOW_TO_GET_IT}), or set {TOKEN_ENV} to it"


def is_auth_failure(error: BaseException) -> bool:
    """Whether Ray refused a connection for its token (Ray's AuthenticationError, or the gRPC refusal text)."""
    import ray.exceptions

    # A Ray older than 2.52 has no AuthenticationError (and no token authentication).
    ray_auth_error = getattr(ray.exceptions, "AuthenticationError", ())
    return isinstance(error, ray_auth_error) or any(m in str(error) for m in _AUTH_MARKERS)


def from_ray_error(where: str, error: BaseException) -> ClusterAuthError:
    """Ray's own refusal, in one line: its messages run to a paragraph with a link, and the first sentence says
    what is wrong; then what to do."""
    first = " ".join(str(error).split()).split(". ")[0].rstrip(".")
    return ClusterAuthError(f"{where}: {first}; give this machine the cluster's token in {TOKEN_ENV}, "
                            f"{TOKEN_PATH_ENV} or ~/.ray/auth_token ({_HOW_TO_GET_IT})")


def gcs_probe(gcs_address: str) -> Probe:
    """One GetClusterId call on the cluster's GCS (its `ray start --port`), the first call a joining driver makes.
    Sent as raw bytes (an empty request message), so no generated Ray stubs are needed."""

    def probe(token: Token | None) -> bool | None:
        import grpc

        metadata = [(k.lower(), v) for k, v in token.header().items()] if token else []
        with grpc.insecure_channel(gcs_address) as channel:
            call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
            try:
                call(b"", metadata=metadata, timeout=PROBE_TIMEOUT_S)
            except grpc.RpcError as e:
                return False if e.code() == grpc.StatusCode.UNAUTHENTICATED else None
        return True

    return probe


def jobs_api_probe(url: str) -> Probe:
    """GET /api/version on the dashboard (the Jobs API): 401 without a token, 403 with a wrong one."""

    def probe(token: Token | None) -> bool | None:
        import requests

        try:
            response = requests.get(url.rstrip("/") + "/api/version", headers=token.header() if token else None,
                                    timeout=PROBE_TIMEOUT_S)
        except requests.RequestException:
            return None
        if response.status_code in (401, 403):
            return False
        return True if response.ok else None

    return probe


def use_token_mode() -> None:
    """Make this process send its token (Ray reads RAY_AUTH_MODE into its cached config once, so refresh it)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ[MODE_ENV] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
