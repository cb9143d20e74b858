"""Config file validation (SPEC §9): interpolation, errors that name the field and its line, ``check-config``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sluicegate.config import ConfigError, load_config, parse_config
from sluicegate.providers.registry import PROVIDERS

GOOD = """\
models:
  - id: gpt-4o-mini
    deployments:
      - provider: openai
        model: gpt-4o-mini
        api_base: ${OPENAI_BASE:-https://api.openai.com/v1}
        api_key: ${OPENAI_API_KEY}
        timeouts: {connect: 5, first_token: 30, idle: 60, total: 600}
    fallbacks: [demo]
    price: {input: 0.15, cached_input: 0.075, output: 0.6}
  - id: demo
    deployments:
      - provider: demo
"""


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ or {}, PROVIDERS)
    assert info.value.problems
    assert all(p in str(info.value) for p in info.value.problems)
    return info.value.problems


def test_good_config_with_interpolation() -> None:
    config = parse_config(GOOD, {"OPENAI_API_KEY": "sk-secret"})
    first = config.models[0]
    assert [m.id for m in config.models] == ["gpt-4o-mini", "demo"]
    assert first.deployments[0].api_key == "sk-secret"
    assert first.deployments[0].api_base == "https://api.openai.com/v1"  # the default after ":-"
    assert first.deployments[0].timeouts.first_token == 30
    assert first.fallbacks == ["demo"]
    assert first.price.cached_input == 0.075
    assert config.model("demo") is not None and config.model("nope") is None
    # The key never shows up in a repr (logs, tracebacks).
    assert "sk-secret" not in repr(config)


def test_env_value_wins_over_default_and_is_not_reinterpolated() -> None:
    config = parse_config(GOOD, {"OPENAI_API_KEY": "${OTHER}", "OPENAI_BASE": "http://local:8000/v1"})
    deployment = config.models[0].deployments[0]
    assert deployment.api_base == "http://local:8000/v1"
    assert deployment.api_key == "${OTHER}"


def test_interpolation_inside_a_longer_string_and_empty_default() -> None:
    text = GOOD.replace("api_key: ${OPENAI_API_KEY}", "api_key: sk-${PART}-${MISSING_OK:-}x")
    config = parse_config(text, {"PART": "abc"})
    assert config.models[0].deployments[0].api_key == "sk-abc-x"


def test_missing_env_var_named_with_its_line() -> None:
    (problem,) = problems(GOOD, {})
    assert problem.startswith("line 7: ")
    assert "models[0].deployments[0].api_key" in problem
    assert "OPENAI_API_KEY" in problem and "not set" in problem


def test_every_missing_env_var_is_reported() -> None:
    text = GOOD.replace("model: gpt-4o-mini", "model: ${UPSTREAM_MODEL}")
    found = problems(text, {})
    assert len(found) == 2
    assert any(p.startswith("line 5: ") and "UPSTREAM_MODEL" in p for p in found)
    assert any(p.startswith("line 7: ") and "OPENAI_API_KEY" in p for p in found)


def test_unknown_field_names_the_field_and_line() -> None:
    text = GOOD.replace("api_base:", "api_bse:")
    found = problems(text, {"OPENAI_API_KEY": "k"})
    assert any(p.startswith("line 6: models[0].deployments[0].api_bse: ") and "Extra inputs" in p for p in found), found


def test_unknown_top_level_and_nested_fields() -> None:
    found = problems(GOOD + "servr:\n  port: 1\n", {"OPENAI_API_KEY": "k"})
    assert any(p.startswith("line 14: servr: ") for p in found), found
    found = problems(GOOD.replace("idle: 60", "idel: 60"), {"OPENAI_API_KEY": "k"})
    assert any(p.startswith("line 8: models[0].deployments[0].timeouts.idel: ") for p in found), found


def test_openai_provider_without_api_base() -> None:
    text = "models:\n  - id: m\n    deployments:\n      - provider: openai\n        model: gpt-x\n"
    (problem,) = problems(text)
    assert problem.startswith("line 4: models[0].deployments[0]: ")
    assert "api_base is required" in problem


def test_non_demo_provider_needs_a_model() -> None:
    text = "models:\n  - id: m\n    deployments:\n      - provider: anthropic\n        api_key: k\n"
    (problem,) = problems(text)
    assert "models[0].deployments[0]" in problem and "model" in problem


def test_unknown_provider_named() -> None:
    text = "models:\n  - id: m\n    deployments:\n      - provider: openia\n"
    found = problems(text)
    assert any(p.startswith("line 4: models[0].deployments[0].provider: ") for p in found), found


def test_duplicate_model_ids() -> None:
    text = "models:\n  - id: m\n    deployments: [{provider: demo}]\n  - id: m\n    deployments: [{provider: demo}]\n"
    (problem,) = problems(text)
    assert problem.startswith("line 1: models: ") and "duplicate model id 'm'" in problem


def test_unknown_fallback() -> None:
    text = "models:\n  - id: m\n    deployments: [{provider: demo}]\n    fallbacks: [gone]\n"
    (problem,) = problems(text)
    assert "fallback 'gone' is not a configured model" in problem and "models" in problem


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("models: [\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("models: []\n", "models"),
        ("models:\n  - id: m\n    deployments: []\n", "models[0].deployments"),
        ("models:\n  - id: m\n    deployments: [{provider: demo, timeouts: {idle: 0}}]\n", "timeouts.idle"),
        ("models:\n  - id: m\n    deployments: [{provider: demo}]\n    price: {input: -1}\n", "price.input"),
    ],
)
def test_other_invalid_files(text: str, needle: str) -> None:
    found = problems(text)
    assert any(needle in p for p in found), found


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD, encoding="utf-8")
    assert load_config(path, {"OPENAI_API_KEY": "k"}).models[0].deployments[0].api_key == "k"
    assert [m.id for m in load_config(None).models] == ["demo"]
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", {})
    assert "cannot read" in info.value.problems[0]


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluicegate", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD, encoding="utf-8")
    ok = check_config(good, {"OPENAI_API_KEY": "k"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{good}: ok (2 models, 2 deployments)"

    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("api_base:", "api_bse:"), encoding="utf-8")
    result = check_config(bad, {"OPENAI_API_KEY": "k"})
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{bad}: invalid" in result.stderr
    assert "line 6: models[0].deployments[0].api_bse: Extra inputs are not permitted" in result.stderr
