"""The Kubernetes API as every step that calls it uses it: configuration, errors, retries.

Transient failures (no connection, a timeout, HTTP 429 or 5xx) are retried with exponential
backoff; anything else (a 4xx: bad request, forbidden, not found, conflict) fails at once with
one line. The kubernetes client is imported inside the functions: steps import fast.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from components.common.errors import StepError

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = (429, 500, 502, 503, 504)
ATTEMPTS = 5
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 8.0


def load_api_client():
    """In-cluster config (the pod's ServiceAccount), else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise StepError(f"no Kubernetes configuration: not in a cluster and no kubeconfig "
                            f"({exc})") from exc
    return client.ApiClient()


def pod_namespace(default: str = "default") -> str:
    """The namespace this pod runs in (its ServiceAccount's), or `default` outside a cluster."""
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or default
    except OSError:
        return default


def api_error(exc: Exception, what: str) -> StepError:
    """One line: what was asked, the HTTP status and reason, the API server's message."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    body = getattr(exc, "body", None)
    detail = f": {' '.join(str(body).split())}" if body else ""
    return StepError(f"{what}: Kubernetes API error {status or ''} {reason}{detail}")


def status_of(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def is_transient(exc: Exception) -> bool:
    """An ApiException with a retryable status, or a failure below HTTP (connection, timeout)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUS or not exc.status
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


def with_retries(what: str, call: Callable[[], T], attempts: int = ATTEMPTS,
                 first_delay: float = FIRST_DELAY_SECONDS) -> T:
    """`call()`, retried on transient failures; a StepError naming `what` when it gives up."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                if attempt > 1:
                    raise api_error(exc, f"{what} (after {attempt} attempts)") from exc
                raise api_error(exc, what) from exc
            log.warning("%s: %s (attempt %d of %d); retrying in %.1f s", what,
                        status_of(exc) or type(exc).__name__, attempt, attempts, delay)
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_SECONDS)
    raise AssertionError("unreachable")


def get_or_none(what: str, call: Callable[[], T]) -> T | None:
    """`with_retries` for a read: a 404 is no object (None), not an error."""
    from kubernetes.client.exceptions import ApiException

    def attempt():
        try:
            return call()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    return with_retries(what, attempt)
