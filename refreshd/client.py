"""The one shared HTTP client that talks to VICIdial: pooling, time-outs, capped reads."""

from __future__ import annotations

import errno
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from refreshd import __version__
from refreshd.vicidial import Transport

__all__ = ["MAX_BODY", "USER_AGENT", "Client", "RawAnswer"]

USER_AGENT = f"refreshd/{__version__}"
# VICIdial answers in one short line; anything past this is an error page or worse.
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class RawAnswer:
    """What came back from one HTTP exchange, before any interpretation."""

    status: int | None
    body: str | None
    transport: Transport | None
    elapsed: float  # seconds, monotonic
    truncated: bool = False


class Client:
    """One `requests.Session` per process, shared by every refresh.

    Never retries at the HTTP level: each repeat of a wrong password is one more failed
    login towards VICIdial's lock-out, so every retry is the policy's decision, not ours.
    Never follows redirects: a redirect would carry the password to another place.
    Sends the parameters as a POST form (VICIdial reads GET and POST alike), so the
    password stays out of web-server access logs and proxies' URL logs.
    """

    def __init__(
        self,
        *,
        timeout: float,
        verify_tls: bool = True,
        pool_size: int = 16,
        max_body: int = MAX_BODY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.verify_tls = verify_tls
        self.max_body = max_body
        self._monotonic = monotonic
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or netrc surprises from the environment
        self._session.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(
            pool_connections=64,
            pool_maxsize=pool_size,
            pool_block=False,
            max_retries=Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0),
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def call(self, url: str, params: Mapping[str, str]) -> RawAnswer:
        """One exchange; never raises for network trouble, and its result holds no URL."""
        start = self._monotonic()
        deadline = start + self.timeout
        try:
            with warnings.catch_warnings():
                # verify_tls=false is warned about once, in our own words, at start-up.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                response = self._session.post(
                    url,
                    data=dict(params),
                    timeout=(self.timeout, self.timeout),
                    verify=self.verify_tls,
                    allow_redirects=False,
                    stream=True,
                )
            with response:
                body, truncated, timed_out = self._read(response, deadline)
                if timed_out:
                    return self._failed(Transport.TIMEOUT, start, response.status_code)
                text = body.decode(response.encoding or "utf-8", errors="replace")
                return RawAnswer(
                    response.status_code, text, None, self._monotonic() - start, truncated
                )
        except requests.exceptions.RequestException as exc:
            return self._failed(transport_failure(exc), start)
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            return self._failed(transport_failure(exc), start)

    def _read(self, response: requests.Response, deadline: float) -> tuple[bytes, bool, bool]:
        """The body up to `max_body`, giving up at the deadline: a server that trickles one
        byte at a time never trips a per-read time-out, so the whole call has one too."""
        chunks: list[bytes] = []
        size = 0
        raw = response.raw
        while size < self.max_body:
            if self._monotonic() > deadline:
                return b"", False, True
            chunk = raw.read1(min(8192, self.max_body - size))
            if not chunk:
                return b"".join(chunks), False, False
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), True, False

    def _failed(self, kind: Transport, start: float, status: int | None = None) -> RawAnswer:
        return RawAnswer(status, None, kind, self._monotonic() - start)

    def close(self) -> None:
        self._session.close()


def transport_failure(exc: BaseException) -> Transport:
    """Sort a network exception into a kind, reading its causes, never its text."""
    if isinstance(exc, requests.exceptions.SSLError):
        return Transport.TLS_ERROR
    if isinstance(exc, requests.exceptions.Timeout):
        return Transport.TIMEOUT
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError | urllib3.exceptions.SSLError):
            return Transport.TLS_ERROR
        if isinstance(cause, TimeoutError | socket.timeout | urllib3.exceptions.TimeoutError):
            return Transport.TIMEOUT
        if isinstance(cause, ConnectionRefusedError):
            return Transport.CONNECTION_REFUSED
        if isinstance(cause, ConnectionResetError | BrokenPipeError):
            return Transport.CONNECTION_RESET
        if isinstance(cause, urllib3.exceptions.ProtocolError):
            return Transport.CONNECTION_RESET
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return Transport.CONNECTION_REFUSED
        nested = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        reason = getattr(cause, "reason", None)
        cause = (
            reason if isinstance(reason, BaseException) else nested or cause.__cause__
        ) or cause.__context__
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return Transport.CONNECTION_RESET
    return Transport.CONNECTION_FAILED
