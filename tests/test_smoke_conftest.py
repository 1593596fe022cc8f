import smtplib

from newsletter.project import Project


def test_smtp_server_records_messages(smtp_server) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port) as client:
        client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nbody\r\n")
    assert smtp_server.messages[0].rcpt_tos == ["b@example.org"]
    assert b"body" in smtp_server.messages[0].data


def test_smtp_project_points_at_server(smtp_project: Project, smtp_server) -> None:
    assert smtp_project.settings.smtp.host == "127.0.0.1"
    assert smtp_project.settings.smtp.port == smtp_server.port
