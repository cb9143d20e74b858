"""Per-detector example tables: what each detector must find, and lookalikes it must leave alone."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluicegate.dlp import BUILTIN_NAMES, CustomKeywords, CustomRegex, DlpRule, Engine, Finding
from sluicegate.dlp.config import DlpConfig

ALL = Engine(DlpRule())
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx4UbaDzY\nq0Z1Ab==\n-----END RSA PRIVATE KEY-----"

# (detector, secret, text around it): the secret must be found exactly, with that type.
POSITIVE = [
    ("email", "bob.smith+tag@example.co.uk", "mail {} today."),
    ("email", "a@b.io", "<{}>"),
    ("payment_card", "4111 1111 1111 1111", "card {}, exp 12/27"),
    ("payment_card", "4111111111111111", "{}"),
    ("payment_card", "5500-0000-0000-0004", "pay with {}."),
    ("payment_card", "3782 822463 10005", "amex {}"),
    ("iban", "DE89 3704 0044 0532 0130 00", "IBAN: {}."),
    ("iban", "GB82WEST12345698765432", "to {} please"),
    ("iban", "FR1420041010050500013M02606", "{}"),
    ("us_ssn", "123-45-6789", "SSN {}"),
    ("phone", "+1 (555) 234-5678", "call {} now"),
    ("phone", "+442079460958", "tel:{}"),
    ("phone", "+44 20 7946 0958", "office {}"),
    ("phone", "(212) 555-0199", "NYC {}"),
    ("phone", "212-555-0199", "or {}."),
    ("ipv4", "192.168.1.10", "host {}:8080"),
    ("ipv4", "1.2.3.4", "version {} is out"),
    ("ipv6", "fe80::1ff:fe23:4567:890a", "addr {}%eth0"),
    ("ipv6", "2001:db8::1", "[{}]:443"),
    ("ipv6", "::ffff:192.0.2.1", "mapped {}"),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPLE", "key={}"),
    ("aws_access_key", "ASIAY34FZKBOKMUTVV7A", "{}"),
    ("aws_secret_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", 'aws_secret_access_key = "{}"'),
    ("aws_secret_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", '{{"SecretAccessKey": "{}"}}'),
    ("aws_secret_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS secret key: {}"),
    ("github_token", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token {}"),
    ("github_token", "gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "{}"),
    ("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN", "{}"),
    ("gitlab_token", "glpat-abcdefghij0123456789", "GITLAB_TOKEN={}"),
    ("slack_token", "xoxb-1234567890-abcdefABC", "slack {}"),
    ("stripe_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe {}"),
    ("stripe_key", "rk_test_4eC39HqLyjWDarjtT1zdp7dc", "{}"),
    ("openai_key", "sk-proj-Abcdefghij0123456789XYZabc_-Q", "OPENAI_API_KEY={}"),
    ("openai_key", "sk-Abcdefghij0123456789XYZabcdefghij0123456789XYZa", "{}"),
    ("anthropic_key", "sk-ant-api03-Abcdefghij0123456789xyz-_AA", "key: {}"),
    ("jwt", JWT, "Authorization: Bearer {}"),
    ("private_key", PEM, "here:\n{}\nthanks"),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----", "{}"),
]

# (detector, text): the detector must not fire anywhere in the text.
NEGATIVE = [
    ("email", "user@localhost and @handle and a@b"),
    ("email", "x" * 70 + "@example.com"),
    ("payment_card", "4111 1111 1111 1112"),  # Luhn fails
    ("payment_card", "1234567812345678"),  # starts with 1, Luhn fails
    ("payment_card", "order 4111111111111111111111 shipped"),  # too long
    ("payment_card", "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"),  # loose digits are prose
    ("iban", "DE89 3704 0044 0532 0130 01"),  # bad checksum
    ("iban", "GB82WEST12345698765431"),
    ("us_ssn", "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000"),
    ("us_ssn", "1234-56-7890 and 2024-01-15"),
    ("phone", "call 12345 or 2024 or 1.2.3.4"),
    ("phone", "555 1234 and 123-456-7890"),  # exchange must start with 2-9
    ("ipv4", "999.1.1.1 and 1.2.3 and 1.2.3.4.5 and 01.2.3.4"),
    ("ipv6", "std::vector<int> and Foo::Bar and 12:30:45 and a:b:c"),
    ("aws_access_key", "AKIA1234 and AKIAIOSFODNN7EXAMPLEXX"),
    ("aws_secret_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),  # no context
    ("aws_secret_key", "secret = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),  # not key-like
    ("github_token", "ghp_short and ghx_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("gitlab_token", "glpat-short"),
    ("slack_token", "xoxb- and xoxz-1234567890-abcdef"),
    ("stripe_key", "sk_live_short pk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("openai_key", "sk- and sk-learn and sk-some-really-long-hyphenated-english-words"),
    ("openai_key", "task-Abcdefghij0123456789XYZabc"),  # not at a token start
    ("anthropic_key", "sk-ant- and sk-ant-short"),
    ("jwt", "eyJub3Rqc29u.eyJzdWIiOjF9.sig"),  # header is not JSON with alg
    ("jwt", "eyJ and eyJhbGciOiJIUzI1NiJ9"),
    ("private_key", "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----"),
    ("private_key", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"),
]


@pytest.mark.parametrize(("detector", "secret", "template"), POSITIVE)
def test_detector_finds_secret(detector: str, secret: str, template: str) -> None:
    text = template.format(secret)
    start = text.index(secret)
    assert Engine(DlpRule(detectors=(detector,))).scan(text) == [Finding(detector, start, start + len(secret))]
    # With every detector on, overlap resolution must keep this one.
    assert Finding(detector, start, start + len(secret)) in ALL.scan(text)


@pytest.mark.parametrize(("detector", "text"), NEGATIVE)
def test_detector_ignores_lookalike(detector: str, text: str) -> None:
    assert Engine(DlpRule(detectors=(detector,))).scan(text) == []


def test_every_builtin_has_positive_and_negative_examples() -> None:
    assert {d for d, _, _ in POSITIVE} == set(BUILTIN_NAMES) == {d for d, _ in NEGATIVE}


def test_truncated_private_key_is_still_redacted() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQ=\nand then prose."
    assert ALL.redact(text)[0] == "[REDACTED:PRIVATE_KEY] then prose."


def test_redact_labels_and_keeps_surroundings() -> None:
    text = "Mail bob@example.com, card 4111-1111-1111-1111; key sk-ant-api03-Abcdefghij0123456789xyz."
    new, findings = ALL.redact(text)
    assert new == "Mail [REDACTED:EMAIL], card [REDACTED:PAYMENT_CARD]; key [REDACTED:ANTHROPIC_KEY]."
    assert [f.type for f in findings] == ["email", "payment_card", "anthropic_key"]


def test_overlap_prefers_specific_then_longest() -> None:
    key = "sk-ant-api03-Abcdefghij0123456789xyz"
    assert ALL.scan(key) == [Finding("anthropic_key", 0, len(key))]
    # The e-mail is longer than the IPv4-looking local part would be.
    assert [f.type for f in ALL.scan("1.2.3.4@example.com")] == ["email"]


def test_findings_never_carry_the_text() -> None:
    finding = ALL.scan("4111 1111 1111 1111")[0]
    assert "4111" not in repr(finding)
    assert not hasattr(finding, "__dict__")


def test_clean_text_has_no_findings() -> None:
    prose = (
        "The deployment on Tuesday went fine: 3 replicas, p99 at 120 ms, version 2.4 rolled out to eu-west-1. "
        "See https://example.com/docs?id=42 and ticket OPS-1234. Error: retry 2 of 5 at 10:30:15.\n"
    )
    assert ALL.scan(prose * 20) == []


def test_custom_regex_and_keywords() -> None:
    engine = Engine(
        DlpRule(detectors=("project_codename", "internal")),
        [CustomRegex("project_codename", "PRJ-[0-9]{4}"), CustomKeywords("internal", ("bluebird", "blue jay"))],
    )
    new, _ = engine.redact("PRJ-1234 (Bluebird) and BLUE JAY, not bluebirds or PRJ-12")
    assert new == "[REDACTED:PROJECT_CODENAME] ([REDACTED:INTERNAL]) and [REDACTED:INTERNAL], not bluebirds or PRJ-12"
    sensitive = Engine(DlpRule(), [CustomKeywords("internal", ("Bluebird",), case_sensitive=True)])
    assert [f.type for f in sensitive.scan("bluebird Bluebird")] == ["internal"]


def test_unknown_detector_and_clashing_custom_name_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Engine(DlpRule(detectors=("nope",)))
    with pytest.raises(ValueError, match="clashes"):
        Engine(DlpRule(), [CustomRegex("email", "x")])
    with pytest.raises(ValueError, match="action"):
        DlpRule("drop")  # type: ignore[arg-type]


def test_config_shape_from_the_issue() -> None:
    cfg = DlpConfig.model_validate(
        {
            "request": {"action": "block", "detectors": ["payment_card", "private_key", "aws_access_key"]},
            "response": {"action": "redact"},
            "custom": [
                {"name": "project_codename", "pattern": "PRJ-[0-9]{4}"},
                {"name": "internal", "keywords": ["bluebird"]},
            ],
            "hold_back": 256,
        }
    )
    request, response = cfg.engine("request"), cfg.engine("response")
    assert request is not None and response is not None
    assert request.action == "block"
    assert request.types == ("payment_card", "private_key", "aws_access_key")
    assert set(response.types) == {*BUILTIN_NAMES, "project_codename", "internal"}
    assert DlpConfig().engine("request") is None


@pytest.mark.parametrize(
    "raw",
    [
        {"request": {"action": "drop"}},
        {"request": {"action": "block", "detectors": ["nope"]}},
        {"custom": [{"name": "email", "pattern": "x"}]},
        {"custom": [{"name": "a", "pattern": "("}]},
        {"custom": [{"name": "a", "pattern": "x*"}]},
        {"custom": [{"name": "a", "keywords": []}]},
        {"custom": [{"name": "a", "pattern": "x"}, {"name": "a", "keywords": ["y"]}]},
        {"hold_back": 10},
        {"bogus": 1},
    ],
)
def test_config_rejects_invalid(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DlpConfig.model_validate(raw)
