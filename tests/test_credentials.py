"""Secrets come from the environment and never show up in output."""

import logging

import pytest

from safelatent.credentials import RedactingFilter, env_secret, redact


def test_env_secret_hides_its_value(monkeypatch):
    monkeypatch.setenv("SAFELATENT_TEST_SECRET", "s3cr3t-value")
    secret = env_secret("SAFELATENT_TEST_SECRET")
    assert secret is not None and secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t" not in repr(secret) and "s3cr3t" not in str(secret)


def test_missing_required_secret(monkeypatch):
    monkeypatch.delenv("SAFELATENT_MISSING_SECRET", raising=False)
    assert env_secret("SAFELATENT_MISSING_SECRET") is None
    with pytest.raises(KeyError, match="SAFELATENT_MISSING_SECRET is not set"):
        env_secret("SAFELATENT_MISSING_SECRET", required=True)


def test_redact_scrubs_known_and_listed_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("SAFELATENT_API_KEYS", "key-one-123,key-two-456")
    text = "failed with wJalrXUtnFEMI and key-two-456"
    assert redact(text) == "failed with *** and ***"


def test_logging_filter_scrubs_messages(monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdef")
    logger = logging.getLogger("safelatent.test")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="safelatent.test"):
        logger.info("calling judge with key %s", "sk-test-abcdef")
    assert "sk-test-abcdef" not in caplog.text
    assert "***" in caplog.text
