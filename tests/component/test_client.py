"""The shared HTTP client against real sockets on loopback: the simulator, a recording
server and a self-signed TLS server. The client reports what came back; it never
interprets, retries or follows."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from refreshd import __version__
from refreshd.client import MAX_BODY, Client, RawAnswer, decode_body
from refreshd.core.vicidial import Transport
from refreshd.simulator import API_PATH, LOGIN_PAGE_PATH, Simulator

GOOD = {
    "function": "server_refresh",
    "stage": "REFRESH",
    "user": "refreshd",
    "pass": "demo-pass-123",
    "source": "test",
}
TIMEOUT = 2.0  # seconds, for every call that is not about time-outs


def call_url(url: str, *, timeout: float = TIMEOUT, verify_tls: bool = True) -> RawAnswer:
    """One call on a fresh client, closed afterwards."""
    client = Client(timeout=timeout, verify_tls=verify_tls)
    try:
        return client.call(url, GOOD)
    finally:
        client.close()


def call(sim: Simulator, *, timeout: float = TIMEOUT) -> RawAnswer:
    return call_url(sim.api_url, timeout=timeout)


def assert_times_out(sim: Simulator, *, timeout: float, within: tuple[float, float]) -> None:
    """One call with a `timeout` s deadline comes back a time-out with no body, after
    `within` (low, high) seconds: cut by the deadline, not before it, nor long after."""
    started = time.monotonic()

    answer = call(sim, timeout=timeout)

    assert answer.transport is Transport.TIMEOUT
    assert answer.body is None
    low, high = within
    assert low <= time.monotonic() - started < high


def api_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get(API_PATH, 0))


# -- answers that arrive ------------------------------------------------------------------


def test_a_good_login_gets_the_success_line(simulator: Simulator) -> None:
    answer = call(simulator)

    assert answer.status == 200
    assert answer.transport is None
    assert answer.body is not None
    assert answer.body.startswith("SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED")
    assert answer.truncated is False


@pytest.mark.parametrize(
    ("mode", "status"), [("http500", 500), ("http502", 502), ("http503", 503), ("http429", 429)]
)
def test_an_http_error_status_is_reported_with_its_body(
    simulator: Simulator, mode: str, status: int
) -> None:
    simulator.set_fault(mode)

    answer = call(simulator)

    assert answer.status == status
    assert answer.transport is None
    assert answer.body is not None
    assert f"<title>{status} " in answer.body


def test_an_html_error_page_is_returned_as_is(simulator: Simulator) -> None:
    simulator.set_fault("html")

    answer = call(simulator)

    assert answer.status == 200
    assert answer.body is not None
    assert "<title>Database Error</title>" in answer.body


def test_php_warnings_before_the_answer_are_kept_in_the_body(simulator: Simulator) -> None:
    simulator.set_fault("php_warning")

    answer = call(simulator)

    assert answer.status == 200
    assert answer.body is not None
    assert "<b>Warning</b>" in answer.body
    assert "SUCCESS: server_refresh" in answer.body


def test_an_empty_body_is_an_empty_string(simulator: Simulator) -> None:
    simulator.set_fault("empty")

    answer = call(simulator)

    assert (answer.status, answer.body, answer.transport) == (200, "", None)


def test_a_redirect_is_reported_not_followed(simulator: Simulator) -> None:
    simulator.set_fault("redirect_login")

    answer = call(simulator)

    assert answer.status == 302
    assert answer.transport is None
    # Following it would have carried the password to the login page.
    assert simulator.stats()["requests"].get(LOGIN_PAGE_PATH, 0) == 0


def test_a_huge_body_is_cut_at_max_body_and_marked_truncated(simulator: Simulator) -> None:
    simulator.set_fault("big")

    answer = call(simulator)

    assert answer.status == 200
    assert answer.body is not None
    assert len(answer.body.encode()) == MAX_BODY
    assert answer.truncated is True


# -- answers that do not arrive ---------------------------------------------------------------


def test_a_reset_connection_is_a_connection_reset(simulator: Simulator) -> None:
    simulator.set_fault("reset")

    answer = call(simulator)

    assert answer.transport is Transport.CONNECTION_RESET
    assert (answer.status, answer.body) == (None, None)


def test_a_server_that_never_answers_times_out_after_the_timeout(simulator: Simulator) -> None:
    simulator.set_fault("timeout")

    assert_times_out(simulator, timeout=0.5, within=(0.4, 5.0))


def test_a_trickling_body_times_out_on_the_total_deadline(simulator: Simulator) -> None:
    # The simulator sends one byte every 0.5 s: each read is quicker than a 1 s per-read
    # time-out, so only a deadline on the whole call stops it (the full body takes ~35 s).
    simulator.set_fault("trickle")

    assert_times_out(simulator, timeout=1.0, within=(0.9, 5.0))


@pytest.mark.parametrize("mode", ["trickle_headers", "continue_forever"])
def test_a_server_that_never_finishes_its_head_times_out_on_the_total_deadline(
    simulator: Simulator, mode: str
) -> None:
    # A byte of head, or a 100 Continue, every 0.2 s: no read ever waits 1 s, so only the
    # deadline on the whole call ends it (a trickled head takes ~40 s, 100s go on for 120 s).
    simulator.set_fault(mode, interval=0.2)

    assert_times_out(simulator, timeout=1.0, within=(0.9, 5.0))


@pytest.mark.parametrize("mode", ["gzip", "gzip_always"])
def test_a_compressing_web_server_is_read_as_the_text_it_sent(
    simulator: Simulator, mode: str
) -> None:
    # `gzip` compresses only for a client that accepts it (we ask for identity);
    # `gzip_always` compresses anyway, and the client decodes it.
    simulator.set_fault(mode)

    answer = call(simulator)

    assert answer.status == 200
    assert answer.body is not None
    assert answer.body.startswith("SUCCESS: server_refresh")


def test_a_closed_port_is_a_refused_connection(refused_port: int) -> None:
    answer = call_url(f"http://127.0.0.1:{refused_port}{API_PATH}")

    assert answer.transport is Transport.CONNECTION_REFUSED


def test_a_closed_port_fails_at_once_without_a_response(refused_port: int) -> None:
    started = time.monotonic()

    answer = call_url(f"http://127.0.0.1:{refused_port}{API_PATH}", timeout=20)

    assert (answer.status, answer.body) == (None, None)
    assert answer.transport is not None
    assert time.monotonic() - started < 5.0  # at once, not after the 20 s time-out


@pytest.mark.parametrize("mode", ["http500", "http503", "http429", "empty", "reset", "timeout"])
def test_each_call_is_one_request_never_retried(simulator: Simulator, mode: str) -> None:
    simulator.set_fault(mode)

    call(simulator, timeout=0.5)

    assert api_requests(simulator) == 1


def test_a_reset_on_a_kept_alive_connection_is_not_retried(simulator: Simulator) -> None:
    client = Client(timeout=TIMEOUT)
    try:
        assert client.call(simulator.api_url, GOOD).status == 200
        simulator.set_fault("reset")

        answer = client.call(simulator.api_url, GOOD)
    finally:
        client.close()

    assert answer.transport is Transport.CONNECTION_RESET
    assert api_requests(simulator) == 2


# -- what is sent -------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str  # the request line's path and query
    headers: dict[str, str]
    body: bytes


@dataclass
class Scripted:
    """A loopback HTTP server that records each request and answers with `reply`."""

    url: str
    seen: list[Seen] = field(default_factory=list)


Reply = Callable[[http.server.BaseHTTPRequestHandler], None]


def _answer_success(handler: http.server.BaseHTTPRequestHandler) -> None:
    body = b"SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - refreshd|2\n"
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextlib.contextmanager
def serving(
    reply: Reply, wrap: Callable[[socket.socket], socket.socket] | None = None
) -> Iterator[Scripted]:
    """A recording server on 127.0.0.1 (random port), answering every request with `reply`;
    `wrap` turns its listening socket into a TLS one."""
    seen: list[Seen] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            reply(self)

        do_GET = do_POST

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    if wrap is not None:
        server.socket = wrap(server.socket)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    scheme = "https" if wrap is not None else "http"
    try:
        yield Scripted(f"{scheme}://127.0.0.1:{server.server_address[1]}{API_PATH}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def recorder() -> Iterator[Scripted]:
    with serving(_answer_success) as scripted:
        yield scripted


def test_the_user_agent_names_refreshd_and_its_version(recorder: Scripted) -> None:
    call_url(recorder.url)

    assert [s.headers.get("User-Agent") for s in recorder.seen] == [f"refreshd/{__version__}"]


def test_the_password_travels_in_a_post_form_not_in_the_url(recorder: Scripted) -> None:
    call_url(recorder.url)

    (request,) = recorder.seen
    assert request.method == "POST"
    assert request.target == API_PATH  # no query string at all
    assert request.headers.get("Content-Type") == "application/x-www-form-urlencoded"
    assert b"pass=demo-pass-123" in request.body.split(b"&")


def test_the_simulator_logs_the_call_without_a_query_string(simulator: Simulator) -> None:
    call(simulator)

    (logged,) = simulator.calls()
    assert logged["path"] == API_PATH
    assert logged["user"] == "refreshd"
    assert "demo-pass-123" not in repr(logged)


# -- how the body becomes text -------------------------------------------------------------------

NAMED = "ERROR: server_refresh USER DOES NOT HAVE PERMISSION - refreshd|Peña Müller ★|"


def _answering(body: bytes, content_type: str | None) -> Reply:
    def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        if content_type is not None:
            handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return reply


@pytest.mark.parametrize(
    ("encoding", "content_type"),
    [
        ("utf-8", "text/html"),  # PHP's default, and requests' Latin-1 guess
        ("utf-8", None),
        ("utf-8", "text/html; charset=UTF-8"),
        ("utf-8", 'text/plain; charset="utf-8"'),
        ("utf-8", "text/html; charset=no-such-codec"),
        ("utf-8", "text/html; charset=base64"),  # a codec, but not a text one
        ("cp1252", "text/html; charset=windows-1252"),
        ("utf-16", "text/html; charset=UTF-16"),
    ],
)
def test_the_body_is_read_in_its_charset_else_utf8(encoding: str, content_type: str | None) -> None:
    body = NAMED if encoding != "cp1252" else NAMED.replace(" ★", "")
    with serving(_answering(body.encode(encoding), content_type)) as scripted:
        assert call_url(scripted.url).body == body


def test_a_body_that_is_not_utf8_and_declares_nothing_is_latin1() -> None:
    body = NAMED.replace(" ★", "")
    with serving(_answering(body.encode("latin-1"), "text/html")) as scripted:
        assert call_url(scripted.url).body == body


def test_a_body_cut_inside_a_character_keeps_its_encoding() -> None:
    body = ("é" * MAX_BODY).encode()  # two bytes each: the cap falls between characters
    cut = decode_body(body[: MAX_BODY + 1], "text/html", truncated=True)
    assert cut == "é" * (MAX_BODY // 2)


def _answer_redirect_slowly(handler: http.server.BaseHTTPRequestHandler) -> None:
    # A proxy's redirect whose body dribbles in: 50 bytes, one every 0.2 s (10 s in all).
    handler.send_response(302)
    handler.send_header("Location", LOGIN_PAGE_PATH)
    handler.send_header("Content-Length", "50")
    handler.end_headers()
    for _ in range(50):
        try:
            handler.wfile.write(b".")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.2)


def test_a_redirect_with_a_trickling_body_still_times_out_on_the_deadline() -> None:
    with serving(_answer_redirect_slowly) as scripted:
        started = time.monotonic()
        call_url(scripted.url, timeout=0.5)
        elapsed = time.monotonic() - started

    assert elapsed < 5.0  # the 0.5 s deadline, with room for a loaded machine; not 10 s


# -- TLS ------------------------------------------------------------------------------------------


def _self_signed_with_cryptography(cert: Path, key: Path) -> bool:
    """Write a certificate and key with the cryptography package; False if it is absent."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    import ipaddress

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return True


def _self_signed_with_openssl(cert: Path, key: Path) -> bool:
    """The same with the openssl command; False if it is absent."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(
        [openssl, "req", "-x509", *ec_key, "-days", "1", *subject, "-keyout", key, "-out", cert],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return True


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, signed by nobody a trust store knows."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    if not (_self_signed_with_cryptography(cert, key) or _self_signed_with_openssl(cert, key)):
        pytest.skip(
            "cannot make a self-signed certificate: neither the cryptography package nor "
            "the openssl command is available"
        )
    return cert, key


@pytest.fixture
def tls_server(self_signed: tuple[Path, Path]) -> Iterator[Scripted]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)

    def wrap(sock: socket.socket) -> socket.socket:
        return context.wrap_socket(sock, server_side=True)

    with serving(_answer_success, wrap) as scripted:
        yield scripted


def test_a_self_signed_certificate_is_untrusted_when_verifying(tls_server: Scripted) -> None:
    answer = call_url(tls_server.url, verify_tls=True)

    assert answer.transport is Transport.TLS_UNTRUSTED
    assert answer.body is None
    assert tls_server.seen == []  # nothing, password included, went out


def test_the_same_server_answers_when_verification_is_off(tls_server: Scripted) -> None:
    answer = call_url(tls_server.url, verify_tls=False)

    assert answer.status == 200
    assert answer.transport is None
