"""Addresses a mail server cannot take without SMTPUTF8 (non-ASCII before the @) are refused on
every way in; umlaut *domains* (IDNA) stay valid."""

from __future__ import annotations

import pytest

from newsletter.audience.addresses import InvalidEmail, normalize_email
from newsletter.audience.importer import import_csv
from newsletter.audience.store import open_store

pytestmark = pytest.mark.backends

NON_ASCII_LOCAL = ["müller@example.org", "greta.groß@example.org", "jörg@müller.de"]


@pytest.mark.parametrize("address", NON_ASCII_LOCAL)
def test_non_ascii_local_part_is_refused_with_a_clear_reason(address):
    with pytest.raises(InvalidEmail) as info:
        normalize_email(address)
    assert "non-ASCII characters before @" in str(info.value)
    assert address in str(info.value)


def test_umlaut_domain_stays_valid():
    assert normalize_email("info@MÜLLER.de") == "info@müller.de"
    assert normalize_email("info@xn--mller-kva.de") == "info@müller.de"


def test_lookups_still_find_rows_stored_before_the_check(project):
    """`forget` / `unsubscribe` of an old bad row must keep working (lookup=True)."""
    assert normalize_email("müller@example.org", lookup=True) == "müller@example.org"


def test_add_and_request_subscription_refuse(project):
    store = open_store(project)
    try:
        news = store.create_list("news")
        for address in NON_ASCII_LOCAL:
            with pytest.raises(InvalidEmail, match="non-ASCII characters before @"):
                store.add_subscriber(address, news.id, confirmed=True)
            with pytest.raises(InvalidEmail, match="non-ASCII characters before @"):
                store.request_subscription(address, news.id)
        assert store.members(news.id, status=None) == []
        store.add_subscriber("info@müller.de", news.id, confirmed=True)
        assert [m.email for m in store.members(news.id)] == ["info@müller.de"]
    finally:
        store.close()


def test_import_reports_non_ascii_local_parts_as_bad_rows_with_line_numbers(project, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("email\nmüller@example.org\nhans@example.org\ngreta.groß@example.org\n"
                    "info@müller.de\n", encoding="utf-8")
    store = open_store(project)
    try:
        news = store.create_list("news")
        report = import_csv(store, path, news, confirmed=True)
        assert [(p.line, p.path) for p in report.problems] == [(2, "email"), (4, "email")]
        for problem in report.problems:
            assert "non-ASCII characters before @ are not deliverable by most mail servers" \
                in problem.message
        assert report.problems[0].format().startswith(f"{path}:2: email:")
        assert sorted(m.email for m in store.members(news.id)) == ["hans@example.org",
                                                                  "info@müller.de"]
    finally:
        store.close()
