"""The rate limit counts by client_network: an IPv6 client by its /64, so that
rotating through its addresses no longer gives a fresh budget each time.

The new column is nullable without a default, so SQLite adds it in place
(ALTER TABLE ADD COLUMN) rather than copying the table. The counted failures of
the current rate-limit window are filled in before the old index goes (it finds
them), so an address that was locked out stays locked out across the upgrade.
Older rows keep NULL: the limit never reads them again.
"""

import ipaddress
from datetime import timedelta

from django.conf import settings
from django.db import migrations, models
from django.utils import timezone


def _network(address: str) -> str:
    """As smtpgateway.auth.limits.classify_client counts a client (copied: a migration must not
    change when that module does)."""
    if ":" not in address:
        return address
    ip = ipaddress.IPv6Address(address)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    prefix = settings.SMTP_IPV6_CLIENT_PREFIX
    return str(ip) if prefix >= 128 else str(ipaddress.IPv6Network((ip, prefix), strict=False))


def fill_current_window(apps, schema_editor):
    limit = settings.SMTP_AUTH_RATE_LIMIT.strip()
    if limit in ("", "0"):
        return
    window = timedelta(seconds=float(limit.partition("/")[2]))
    AuthAttempt = apps.get_model("smtpgateway", "AuthAttempt")
    counted = AuthAttempt.objects.using(schema_editor.connection.alias).filter(
        credential_failure=True, created_at__gte=timezone.now() - window
    )
    for address in counted.exclude(remote_addr=None).values_list("remote_addr", flat=True).distinct().order_by():
        counted.filter(remote_addr=address).update(client_network=_network(address))


class Migration(migrations.Migration):
    dependencies = [
        ("smtpgateway", "0008_authzid_reason"),
    ]

    operations = [
        migrations.AddField(
            model_name="authattempt",
            name="client_network",
            field=models.CharField(
                blank=True,
                help_text="What the AUTH rate limit counts by: the IPv4 address, or the IPv6 address's network "
                "(SMTP_IPV6_CLIENT_PREFIX bits, /64 by default).",
                max_length=43,
                null=True,
            ),
        ),
        migrations.RunPython(fill_current_window, migrations.RunPython.noop),
        migrations.RemoveIndex(
            model_name="authattempt",
            name="authattempt_counted_failures",
        ),
        migrations.AddIndex(
            model_name="authattempt",
            index=models.Index(
                condition=models.Q(("credential_failure", True)),
                fields=["client_network", "created_at"],
                name="authattempt_counted_failures",
            ),
        ),
    ]
