"""The one shared HTTP client that talks to VICIdial: pooling, time-outs, capped reads."""

from __future__ import annotations

import contextlib
import email.message
import errno
import re
import ssl
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
from urllib3.util.ssl_match_hostname import CertificateError as HostnameMismatch

from refreshd import __version__
from refreshd.clock import system_clock
from refreshd.config import Config
from refreshd.config.fields import proxy_secrets
from refreshd.core.secrets import Secrets
from refreshd.core.vicidial import Transport
from refreshd.deadline import DeadlineHTTPPool, DeadlineHTTPSPool, Reaper

__all__ = ["MAX_BODY", "USER_AGENT", "Client", "RawAnswer", "client_for"]

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


_DEADLINE_POOLS = {"http": DeadlineHTTPPool, "https": DeadlineHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose proxy managers use the deadline pools too, so a call through
    a proxy is cut at its deadline like any other."""

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _DEADLINE_POOLS
        return manager


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
        proxy: str | None = None,
        pool_size: int = 16,
        max_body: int = MAX_BODY,
        monotonic: Callable[[], float] = system_clock.monotonic,
        secrets: Iterable[str] = (),
    ) -> None:
        self.timeout = timeout
        # Every secret an answer could echo (each password of the config, the proxy's):
        # whatever a call brings back is masked with all of them before it is kept or shown.
        self.secrets = Secrets({*secrets, *proxy_secrets(proxy)})
        self.verify_tls = verify_tls
        self.max_body = max_body
        self._monotonic = monotonic
        self._session = requests.Session()
        # No proxy or netrc from the environment: a proxy variable set for a whole host or
        # container would route the password through it unseen; [client] proxy is the one way.
        self._session.trust_env = False
        self._proxies = {"http": proxy, "https": proxy} if proxy else {}
        self._session.headers["User-Agent"] = USER_AGENT
        self._headers = {
            **self._session.headers,
            "Content-Type": "application/x-www-form-urlencoded",
            # A web server that compresses (mod_deflate, nginx gzip on) may do so only when
            # asked; one that compresses anyway is decoded in _read.
            "Accept-Encoding": "identity",
        }
        adapter = _DeadlineAdapter(
            pool_connections=64,
            pool_maxsize=pool_size,
            pool_block=False,
            max_retries=Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0),
        )
        adapter.poolmanager.pool_classes_by_scheme = _DEADLINE_POOLS
        self._reaper = Reaper(monotonic)
        self._adapter = adapter
        self._lock = threading.Lock()
        self._calls = 0  # in flight now
        self._retired = False  # close after the last call in flight
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def call(
        self, url: str, params: Mapping[str, str], *, verify: bool | str | None = None
    ) -> RawAnswer:
        """One exchange, over by `timeout` whatever the server sends (connect, TLS, status
        line, headers and body alike); never raises for network trouble, and its result
        holds no URL. `verify`: the server's trust (`Config.verify_for`: a CA file, True
        for the system's store, False for none); None: the client's `verify_tls`."""
        with self._lock:
            self._calls += 1
        try:
            start = self._monotonic()
            deadline = start + self.timeout
            trust = self.verify_tls if verify is None else verify
            with self._reaper.watching(deadline) as watch:
                answer = self._exchange(url, params, trust, start, deadline)
            if watch.expired:
                # The reaper cut it: whatever the broken read looked like (an error, or a
                # body that just stopped), it was the deadline, and what came is not the
                # answer.
                return self._failed(Transport.TIMEOUT, start, answer.status)
            return answer
        finally:
            with self._lock:
                self._calls -= 1
                last = self._retired and self._calls == 0
            if last:
                self.close()

    def _exchange(
        self,
        url: str,
        params: Mapping[str, str],
        verify: bool | str,
        start: float,
        deadline: float,
    ) -> RawAnswer:
        try:
            # Prepared directly, not by Session.prepare_request: nothing of the session's
            # (cookies, auth, hooks) is wanted, and merging them cost a third of the
            # client's CPU per call (docs/PERFORMANCE.md).
            request = requests.PreparedRequest()
            request.prepare(
                method="POST", url=url, headers=self._headers, data=urlencode(params).encode()
            )
            with warnings.catch_warnings():
                # verify_tls=false is warned about once, in our own words, at start-up.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                # The adapter directly, not Session.send: with redirects off, Session.send
                # still reads a 3xx body to the end (to offer Response.next), outside our
                # size cap and deadline.
                response = self._adapter.send(
                    request,
                    stream=True,
                    timeout=(self.timeout, self.timeout),
                    verify=verify,
                    proxies=self._proxies,
                )
            with response:
                try:
                    body, truncated, timed_out = self._read(response, deadline)
                except urllib3.exceptions.DecodeError:
                    # Compressed and broken: an answer, but an unreadable one.
                    encoding = response.headers.get("Content-Encoding", "?")[:20]
                    text = f"(a body sent with Content-Encoding {encoding} that does not decode)"
                    elapsed = self._monotonic() - start
                    return RawAnswer(response.status_code, text, None, elapsed)
                if timed_out:
                    return self._failed(Transport.TIMEOUT, start, response.status_code)
                text = decode_body(body, response.headers.get("Content-Type"), truncated)
                return RawAnswer(
                    response.status_code, text, None, self._monotonic() - start, truncated
                )
        except requests.exceptions.RequestException as exc:
            refused = proxy_refusal(exc)
            if refused is not None:
                return self._failed(Transport.PROXY_REFUSED, start, refused)
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
            chunk = raw.read1(min(8192, self.max_body - size), decode_content=True)
            if not chunk:
                return b"".join(chunks), False, False
            chunks.append(chunk)
            size += len(chunk)
        # A decoded chunk may run past the cap: the cap is on what we keep, decoded.
        return b"".join(chunks)[: self.max_body], True, False

    def _failed(self, kind: Transport, start: float, status: int | None = None) -> RawAnswer:
        return RawAnswer(status, None, kind, self._monotonic() - start)

    def retire(self) -> None:
        """Close once the calls in flight end (a reload replaced this client): until then
        they keep their connections; after, its pooled sockets and its reaper thread go.
        A call that took this client just before still works, and closes it again."""
        with self._lock:
            self._retired = True
            idle = self._calls == 0
        if idle:
            self.close()

    def close(self) -> None:
        """Close the pooled connections and end the reaper's thread."""
        self._session.close()
        self._reaper.close()


def client_for(config: Config) -> Client:
    """The shared client, as the config's [client] table and max_concurrency say."""
    return Client(
        timeout=config.client.timeout.total_seconds(),
        verify_tls=config.client.verify_tls,
        proxy=config.client.proxy,
        pool_size=config.daemon.max_concurrency,
        secrets=config.secrets(),
    )


def decode_body(body: bytes, content_type: str | None, truncated: bool = False) -> str:
    """The body as text: in the charset Content-Type declares, else UTF-8 (PHP's default
    charset, and what a VICIdial answer with a name in it is), else Latin-1, which reads any
    byte. Not requests' choice: Latin-1 for any text/* without a charset, which turned every
    UTF-8 answer into mojibake. A body cut at `max_body` may end inside a character: that
    character is dropped, not the encoding."""
    for encoding in (_charset(content_type), "utf-8"):
        if encoding is None:
            continue
        try:
            return body.decode(encoding)
        except UnicodeDecodeError as error:
            if truncated and error.reason == "unexpected end of data":
                with contextlib.suppress(UnicodeDecodeError):
                    return body[: error.start].decode(encoding)
        except LookupError:  # no such codec, or one that makes no text (base64)
            continue
    return body.decode("latin-1")


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    header = email.message.Message()
    header["Content-Type"] = content_type
    return header.get_content_charset()


def transport_failure(exc: BaseException) -> Transport:
    """Sort a network exception into a kind, reading its causes, never its text."""
    chain = _causes(exc)

    def having(*kinds: type[BaseException]) -> bool:
        return any(isinstance(cause, kinds) for cause in chain)

    refused = _certificate_refusal(chain)
    if refused is not None:
        return refused
    if having(requests.exceptions.SSLError, ssl.SSLError, urllib3.exceptions.SSLError):
        return Transport.TLS_ERROR
    if having(ConnectionRefusedError) or any(
        isinstance(c, OSError) and c.errno == errno.ECONNREFUSED for c in chain
    ):
        return Transport.CONNECTION_REFUSED
    if having(ConnectionResetError, BrokenPipeError):
        return Transport.CONNECTION_RESET
    # urllib3's NewConnectionError subclasses its ConnectTimeoutError whatever the cause,
    # so it must not count as a time-out by itself.
    if having(requests.exceptions.Timeout, TimeoutError) or any(
        isinstance(c, urllib3.exceptions.TimeoutError)
        and not isinstance(c, urllib3.exceptions.NewConnectionError)
        for c in chain
    ):
        return Transport.TIMEOUT
    if having(urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError):
        return Transport.CONNECTION_RESET
    return Transport.CONNECTION_FAILED


# What http.client raises when a proxy answers CONNECT with anything but 200; the one place
# the status is found is this text, of which only the number is kept (the rest is the proxy's).
_TUNNEL_REFUSED = re.compile(r"^Tunnel connection failed: (\d{3})\b")


def proxy_refusal(exc: BaseException) -> int | None:
    """The status the proxy refused the CONNECT tunnel with, if that is what ended the call."""
    chain = _causes(exc)
    if not any(isinstance(cause, urllib3.exceptions.ProxyError) for cause in chain):
        return None
    for cause in chain:
        if type(cause) is OSError and cause.args and isinstance(cause.args[0], str):
            match = _TUNNEL_REFUSED.match(cause.args[0])
            if match:
                return int(match.group(1))
    return None


# OpenSSL's X509_V_ERR_* codes that a retry cannot heal but a person can name the fix for;
# every other verification failure is an untrusted certificate.
_EXPIRED_CODES = frozenset({9, 10})  # not yet valid, expired
_NAME_CODES = frozenset({62, 64})  # host name mismatch, IP address mismatch


def _certificate_refusal(chain: list[BaseException]) -> Transport | None:
    """Which certificate check failed, if one did: the handshake completed far enough for
    the server's certificate to be refused, so no request (and no password) was sent."""
    for cause in chain:
        if isinstance(cause, ssl.SSLCertVerificationError):
            code = cause.verify_code
            if code in _EXPIRED_CODES:
                return Transport.TLS_EXPIRED
            if code in _NAME_CODES:
                return Transport.TLS_NAME_MISMATCH
            return Transport.TLS_UNTRUSTED
        if isinstance(cause, HostnameMismatch):
            # urllib3's own host name match (when it, not OpenSSL, checks the name).
            return Transport.TLS_NAME_MISMATCH
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps: causes, contexts, `reason`s and exception args."""
    found: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(found) < 32:
        current = todo.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        reason = getattr(current, "reason", None)
        linked = [current.__cause__, current.__context__, reason, *current.args]
        todo.extend(item for item in linked if isinstance(item, BaseException))
    return found
