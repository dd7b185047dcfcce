"""Check, before anything is saved or evaluated, that a push to the Hub can succeed: the Hub is reachable (not in
offline mode), a token is there, the Hub accepts it, and it may write to the repository's namespace.

Without this check a push without network re-saves the model and then fails with ~90 lines of transport errors; an
invalid or read-only token fails only at the upload. One `whoami` request (bounded by `PROBE_TIMEOUT`) answers all of
it, and each failure is one line naming the problem and the fix.
"""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from ..sources import PROBE_TIMEOUT

TOKENS_PAGE = "https://huggingface.co/settings/tokens"


class HubAccessError(ValueError):
    """A push that cannot succeed: offline mode, an unreachable Hub, no token, an invalid or read-only token."""


def check_write_access(repo_id: str, *, token: str | None = None, endpoint: str | None = None) -> str:
    """The user name of the token that will push to `repo_id`, after checking that it may.

    Args:
        repo_id: "namespace/name" (a bare name is the token owner's).
        token: the token to push with; default: `HF_TOKEN`, else the stored login (`hf auth login`).
        endpoint: the Hub URL; default: `HF_ENDPOINT`, else https://huggingface.co.

    Raises:
        HubAccessError: naming the problem (offline mode, no network, no token, invalid or read-only token, a
            namespace the user cannot write to) and the fix.
    """
    where = f"Pushing to {repo_id}"
    if constants.HF_HUB_OFFLINE:
        raise HubAccessError(
            f"{where} needs the Hub, but offline mode is on (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE (or set it "
            "to 0) on a machine that reaches the Hub, then push again."
        )
    token = token or get_token()
    if not token:
        raise HubAccessError(
            f"{where} needs a Hub token with write access, and none was found; pass one with --token (token=), set "
            f"HF_TOKEN, or log in with `hf auth login` (tokens: {TOKENS_PAGE})."
        )
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    identity = _whoami(where, endpoint, token)
    user = identity.get("name", "?")
    if not _can_write(identity.get("auth", {}).get("accessToken", {})):
        raise HubAccessError(
            f"{where}: the token of {user} is read-only; create a token with write access ({TOKENS_PAGE}) and pass it "
            "with --token (token=) or HF_TOKEN."
        )
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    writable = {user, *(org.get("name") for org in identity.get("orgs", []))}
    if namespace not in writable:
        raise HubAccessError(
            f"{where}: {user} may not write to the namespace {namespace!r} (theirs: {', '.join(sorted(writable))}); "
            f"push to {user}/{repo_id.split('/')[-1]} or to an organisation {user} belongs to."
        )
    return user


def _whoami(where: str, endpoint: str, token: str) -> dict[str, Any]:
    """The Hub's `whoami-v2` answer for `token`, or a `HubAccessError` saying why there is none."""
    try:
        response = get_session().get(
            f"{endpoint}/api/whoami-v2", headers=build_hf_headers(token=token), timeout=PROBE_TIMEOUT
        )
        hf_raise_for_status(response)
    except HfHubHTTPError as error:
        status = error.response.status_code
        if status == 401:
            source = "given" if token != os.environ.get("HF_TOKEN") else "in HF_TOKEN"
            raise HubAccessError(
                f"{where}: the Hub at {endpoint} rejects the token {source} as invalid or expired (401); create a "
                f"token with write access ({TOKENS_PAGE}) and pass it with --token (token=) or HF_TOKEN."
            ) from None
        raise HubAccessError(
            f"{where}: the Hub at {endpoint} answered {status} to the token check ({error}); try again later."
        ) from None
    except (HTTPError, OSError) as error:  # transport errors (connection refused, DNS, timeout, proxy)
        raise HubAccessError(
            f"{where}: the Hub at {endpoint} is unreachable ({type(error).__name__}: {error}); check the network "
            "connection (or HF_ENDPOINT and the proxy settings), then push again."
        ) from None
    return response.json()


def _can_write(access_token: dict[str, Any]) -> bool:
    """Whether a `whoami` token description allows writing: not a "read" token, and a fine-grained token only with
    some `repo.write` permission."""
    role = access_token.get("role")
    if role == "read":
        return False
    if role == "fineGrained":
        scopes = access_token.get("fineGrained", {})
        permissions = [*scopes.get("global", []), *(p for s in scopes.get("scoped", []) for p in s["permissions"])]
        return "repo.write" in permissions
    return True


__all__ = ["HubAccessError", "check_write_access"]
