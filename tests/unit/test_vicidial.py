"""Classifying VICIdial's answers: every real answer, its variants, and anything else."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refreshd.core.secrets import Secrets, secret_pattern
from refreshd.core.vicidial import (
    MAX_DETAIL,
    Outcome,
    Transport,
    classify,
    classify_probe,
    parse_version,
    probe_params,
    redact,
    refresh_params,
)

PASSWORD = "s3cretPass_9"

# (body, outcome): every row of VICIDIAL_API.md's table, as the 2024 PHP and the tutorial send it.
REAL_ANSWERS = [
    ("SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - apiuser|3", Outcome.OK),
    ("SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - apiuser|0", Outcome.OK),
    ("SUCCESS: server_refresh Server 192.168.1.10 Refreshed Successfully", Outcome.OK),
    (f"ERROR: Login incorrect, please try again: |apiuser|{PASSWORD}|BAD|", Outcome.AUTH_FAILED),
    ("ERROR: INVALID USERNAME OR PASSWORD", Outcome.AUTH_FAILED),
    (
        "ERROR: Too many login attempts, try again in 15 minutes: |apiuser|LOCK|",
        Outcome.LOCKED_OUT,
    ),
    ("ERROR: Your IP Address is not allowed: 10.1.2.3: |apiuser|IPBLOCK|", Outcome.IP_BLOCKED),
    (
        "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: |apiuser|server_refresh|",
        Outcome.PERMISSION_DENIED,
    ),
    (
        "ERROR: server_refresh USER DOES NOT HAVE PERMISSION TO REFRESH SERVERS: |apiuser|0",
        Outcome.PERMISSION_DENIED,
    ),
    ("ERROR: USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION", Outcome.PERMISSION_DENIED),
    ("ERROR: SERVER IP NOT FOUND", Outcome.NOT_FOUND),
    (
        "ERROR: server_refresh YOU MUST USE ALL REQUIRED FIELDS: |apiuser|REFRESHX|",
        Outcome.BAD_REQUEST,
    ),
    ("ERROR: Invalid Source - x\nERROR: Invalid Source: |x|", Outcome.BAD_REQUEST),
    ("ERROR: NO FUNCTION SPECIFIED", Outcome.BAD_REQUEST),
]


def _variants(body: str) -> list[str]:
    return [
        body,
        body + "\n",
        body + "\r\n",
        body.replace("\n", "\r\n"),
        body.lower(),
        body.upper(),
        body.replace(" ", "  "),
        body.replace(": ", ":"),
        "\n\n  " + body + "  \n",
    ]


@pytest.mark.parametrize(("body", "outcome"), REAL_ANSWERS)
def test_every_real_answer_and_its_case_and_spacing_variants_classify(
    body: str, outcome: Outcome
) -> None:
    for variant in _variants(body):
        assert classify(200, variant).outcome is outcome, variant


@pytest.mark.parametrize(("body", "outcome"), REAL_ANSWERS)
def test_php_warnings_before_the_answer_do_not_hide_it(body: str, outcome: Outcome) -> None:
    warning = (
        "<br />\n<b>Warning</b>:  mysqli_query(): MySQL server has gone away in "
        "<b>/srv/www/htdocs/vicidial/non_agent_api.php</b> on line <b>212</b><br />\n"
    )
    assert classify(200, warning + body).outcome is outcome
    # Same physical line: PHP often omits the newline after the <br />.
    assert classify(200, warning.rstrip("\n") + body).outcome is outcome


def test_success_reports_the_number_of_servers_flagged() -> None:
    answer = classify(200, "SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - u|7\n")
    assert answer.servers_flagged == 7
    assert classify(200, "SUCCESS: server_refresh ... TRIGGERED - u|0").servers_flagged == 0


def test_tutorial_success_has_no_count() -> None:
    answer = classify(200, "SUCCESS: Server 192.168.1.10 Refreshed Successfully")
    assert answer.outcome is Outcome.OK
    assert answer.servers_flagged is None


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (404, Outcome.NOT_FOUND),
        (429, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (502, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (504, Outcome.TRANSIENT),
        (401, Outcome.UNEXPECTED),
        (403, Outcome.UNEXPECTED),
        (302, Outcome.UNEXPECTED),
        (418, Outcome.UNEXPECTED),
    ],
)
def test_http_status_outside_2xx_decides_before_the_body(status: int, outcome: Outcome) -> None:
    answer = classify(status, "SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - u|1")
    assert answer.outcome is outcome
    assert answer.http_status == status


CERTIFICATE_REFUSALS = [Transport.TLS_UNTRUSTED, Transport.TLS_NAME_MISMATCH, Transport.TLS_EXPIRED]
NOT_TRANSIENT = [*CERTIFICATE_REFUSALS, Transport.PROXY_REFUSED]


@pytest.mark.parametrize("kind", [k for k in Transport if k not in NOT_TRANSIENT])
def test_every_other_transport_failure_is_transient(kind: Transport) -> None:
    answer = classify(None, None, kind)
    assert answer.outcome is Outcome.TRANSIENT
    assert answer.detail


@pytest.mark.parametrize("kind", CERTIFICATE_REFUSALS)
def test_a_refused_certificate_is_tls_rejected_and_never_reached_vicidial(kind: Transport) -> None:
    answer = classify(None, None, kind)
    assert answer.outcome is Outcome.TLS_REJECTED
    assert not answer.reached  # the handshake failed: no password left, no login counted
    assert "never falls back" in answer.detail


@pytest.mark.parametrize(
    ("status", "outcome", "words"),
    [
        (407, Outcome.PROXY_REFUSED, "fix USER:PASSWORD in [client] proxy"),
        (403, Outcome.PROXY_REFUSED, "forbid api_url's host"),
        (501, Outcome.PROXY_REFUSED, "does not tunnel https://"),
        (400, Outcome.PROXY_REFUSED, "check [client] proxy"),
        (502, Outcome.TRANSIENT, "could not reach api_url's host (HTTP 502)"),
        (503, Outcome.TRANSIENT, "could not reach"),
    ],
)
def test_a_proxy_refusing_the_tunnel_names_the_proxy_its_status_and_the_fix(
    status: int, outcome: Outcome, words: str
) -> None:
    answer = classify(status, None, Transport.PROXY_REFUSED)
    assert answer.outcome is outcome
    assert f"HTTP {status}" in answer.detail
    assert "proxy" in answer.detail
    assert words in answer.detail
    assert not answer.reached  # the proxy answered: VICIdial never saw the login
    assert not answer.unreadable


def test_a_407_answer_to_an_http_request_is_the_proxys_too() -> None:
    answer = classify(407, "<html>Proxy Authentication Required</html>")
    assert answer.outcome is Outcome.PROXY_REFUSED
    assert "USER:PASSWORD" in answer.detail


@pytest.mark.parametrize("body", ["", "   ", "\n\r\n", None])
def test_empty_body_is_transient(body: str | None) -> None:
    assert classify(200, body).outcome is Outcome.TRANSIENT


@pytest.mark.parametrize(
    "body",
    [
        "<html><head><title>503 Service Unavailable</title></head><body>down</body></html>",
        "<html><body><h1>Error: the proxy could not reach the backend</h1></body></html>",
        "<form action=/login.php><input name=user><input type=password name=pass></form>",
        "VERSION: 2.14-917a|BUILD: 240101-1200|DATE: 2026-11-27 12:00:00|EPOCH: 1|",
        "SUCCESS: add_lead LEAD HAS BEEN ADDED",
        "ERROR: something nobody has seen before",
        "Fatal error: Allowed memory size exhausted",
    ],
)
def test_anything_else_is_unexpected(body: str) -> None:
    assert classify(200, body).outcome is Outcome.UNEXPECTED


def test_unexpected_detail_is_capped() -> None:
    answer = classify(200, "x" * 10_000)
    assert answer.outcome is Outcome.UNEXPECTED
    assert len(answer.detail) <= MAX_DETAIL


def test_echoed_password_is_redacted_even_when_the_secret_is_not_known() -> None:
    body = f"ERROR: Login incorrect, please try again: |apiuser|{PASSWORD}|BAD|"
    answer = classify(200, body)
    assert PASSWORD not in answer.detail
    assert "|apiuser|***|BAD|" in answer.detail


def test_known_secret_is_redacted_in_any_form() -> None:
    text = f"pass={PASSWORD}&x=1 and raw {PASSWORD} and encoded s3cretPass_9"
    out = redact(text, [PASSWORD, "p@ss word"])
    assert PASSWORD not in out
    assert redact("got p%40ss+word here", ["p@ss word"]) == "got *** here"


@pytest.mark.parametrize(
    "echoed",
    [
        "S3CRETPASS_9",  # another letter case
        "s3CretPaSS_9",
        "&#115;&#51;cretPass_9",  # HTML decimal entities, mixed with plain letters
        "&#x73;&#X33;&#x63;retPass_9",  # HTML hex entities
        "%73%33cretPass%5F9",  # URL-encoded, either case of hex
        "%73%33cretPass%5f9",
    ],
)
def test_a_known_secret_is_redacted_in_other_cases_and_escaped_forms(echoed: str) -> None:
    assert redact(f"ERROR: echoed [{echoed}] here", [PASSWORD]) == "ERROR: echoed [***] here"


def test_a_secret_with_html_special_characters_is_redacted_as_named_entities() -> None:
    assert redact("value: a&amp;b&lt;c&quot;d", ['a&b<c"d']) == "value: ***"


def test_a_short_secret_is_redacted_too() -> None:
    # check warns about such passwords (they mask innocent text); they are never shown.
    assert redact("pw 1234 and 12345", ["1234"]) == "pw *** and ***5"


def test_query_string_password_is_redacted() -> None:
    out = redact("GET /vicidial/non_agent_api.php?function=x&user=u&pass=abc123&source=y")
    assert "abc123" not in out
    assert "pass=***&source=y" in out


def test_probe_passes_on_required_fields_answer() -> None:
    result = classify_probe(200, "ERROR: server_refresh YOU MUST USE ALL REQUIRED FIELDS: |u||")
    assert result.ok
    assert result.outcome is Outcome.OK


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ("ERROR: Login incorrect, please try again: |u|p|BAD|", Outcome.AUTH_FAILED),
        (
            "ERROR: server_refresh USER DOES NOT HAVE PERMISSION TO REFRESH SERVERS: |u|0",
            Outcome.PERMISSION_DENIED,
        ),
        ("ERROR: NO FUNCTION SPECIFIED", Outcome.BAD_REQUEST),
        ("ERROR: Invalid Source - x", Outcome.BAD_REQUEST),
    ],
)
def test_probe_fails_on_anything_but_required_fields(body: str, outcome: Outcome) -> None:
    result = classify_probe(200, body)
    assert not result.ok
    assert result.outcome is outcome


def test_refresh_params_carry_stage_and_server_ip_only_when_set() -> None:
    assert refresh_params("u", "p", "refreshd") == {
        "function": "server_refresh",
        "stage": "REFRESH",
        "user": "u",
        "pass": "p",
        "source": "refreshd",
    }
    assert refresh_params("u", "p", "refreshd", "10.0.0.11")["server_ip"] == "10.0.0.11"


def test_probe_params_have_no_stage() -> None:
    assert "stage" not in probe_params("u", "p", "refreshd")


def test_version_is_parsed() -> None:
    body = "VERSION: 2.14-917a|BUILD: 240101-1200|DATE: 2026-11-27 12:00:00|EPOCH: 1|DST: 0|"
    assert parse_version(body) == "2.14-917a build 240101-1200"
    assert parse_version("<html>nope</html>") is None


@given(
    status=st.one_of(st.none(), st.integers(min_value=0, max_value=999)),
    body=st.one_of(st.none(), st.text(), st.binary().map(lambda b: b.decode("latin-1"))),
    transport=st.one_of(st.none(), st.sampled_from(list(Transport))),
    secrets=st.lists(st.text(max_size=12), max_size=3),
)
def test_classification_never_raises_and_yields_one_outcome(
    status: int | None, body: str | None, transport: Transport | None, secrets: list[str]
) -> None:
    answer = classify(status, body, transport, secrets=secrets)
    assert isinstance(answer.outcome, Outcome)
    assert len(answer.detail) <= MAX_DETAIL
    assert isinstance(classify_probe(status, body, transport, secrets=secrets).ok, bool)


# Every server's ping URL is a secret: a fleet has thousands, and every string of every log
# line, answer, status page and notification is masked with all of them.
MANY = [f"https://hc-ping.com/{n:08x}-7d1c-4b7e-9a3e-{n * 7919:012x}" for n in range(2000)]


@pytest.mark.parametrize(
    "echoed",
    ["s3cretPass_9", "S3CRETPASS_9", "&#115;&#51;cretPass_9", "%73%33cretPass%5f9"],
)
def test_among_thousands_of_secrets_each_is_still_masked_in_every_form(echoed: str) -> None:
    secrets = [*MANY, PASSWORD]
    assert redact(f"ERROR: echoed [{echoed}] here", secrets) == "ERROR: echoed [***] here"
    ping = MANY[1234]
    assert redact(f"GET {ping}/start failed", secrets) == "GET ***/start failed"
    assert redact(f"GET {ping.upper()}", secrets) == "GET ***"
    assert redact("GET " + ping.replace("/", "%2F"), secrets) == "GET ***"


def test_masking_with_thousands_of_secrets_searches_only_the_few_that_may_be_there() -> None:
    # Beyond 256 secrets each one's pattern was compiled again for every string: with
    # 1,000 ping URLs a single log field took six seconds, the status page hours. Counted,
    # not timed (make bench measures speed): a text is searched only for the secrets whose
    # last letters it holds, and a text naming one secret is masked all the same.
    secrets = Secrets(MANY)
    texts = [
        "refresh.succeeded east-1 ok 2026-11-30T01:01:01Z",
        "Mon 02:00 UTC+00:00, in 4h",
        "ERROR: server_refresh USER DOES NOT HAVE PERMISSION &amp; 100% sure",
    ]
    for text in texts:
        assert len(secrets.candidates(text)) <= 1, text
        assert redact(text, tuple(MANY)) == text
    named = f"GET {MANY[1234]} failed"
    assert MANY[1234] in secrets.candidates(named)
    assert redact(named, tuple(MANY)) == "GET *** failed"


PLAIN_LETTERS = string.ascii_letters + string.digits + "!$'(),./:=?@_~-"
POOL = [f"https://hooks.example/{n:05d}/{'k' * (n % 7)}Tok-{n * 31:x}" for n in range(200)]


def _written(secret: str, ways: list[int], case: list[bool]) -> str:
    """`secret` as a text might echo it: each letter as itself, in the other case,
    URL-encoded, or as a numeric entity with or without its `;`."""
    out = []
    for index, letter in enumerate(secret):
        way = ways[index % len(ways)]
        code = ord(letter)
        shown = letter.swapcase() if case[index % len(case)] else letter
        out.append(
            [shown, f"%{code:02X}", f"&#{code};", f"&#{code}", f"&#x{code:x};", f"&#X0{code:x}"][
                way
            ]
        )
    return "".join(out)


@given(
    which=st.integers(0, len(POOL) - 1),
    ways=st.lists(st.integers(0, 5), min_size=1, max_size=6),
    case=st.lists(st.booleans(), min_size=1, max_size=4),
    before=st.text(alphabet=PLAIN_LETTERS + "%&#;+ 0123456789", max_size=6),
    after=st.text(alphabet=PLAIN_LETTERS + "%&#;+ 0123456789", max_size=6),
)
def test_a_secret_among_many_is_masked_however_it_is_written(
    which: int, ways: list[int], case: list[bool], before: str, after: str
) -> None:
    # The quick search for the secrets a text may hold never misses one that every
    # secret's own pattern would have found.
    secrets = Secrets(POOL)
    text = before + _written(POOL[which], ways, case) + after
    out = redact(text, secrets)
    assert not any(secret_pattern(secret).search(out) for secret in POOL), (text, out)
