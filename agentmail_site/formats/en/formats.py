"""How the admin shows dates and times (settings.FORMAT_MODULE_PATH): to the
second and with the zone, as the log lines have them ("2026-05-01 21:22:05,123"
there, or "2026-05-01T21:22:05.123Z" with LOG_FORMAT=json; "2026-05-01 21:22:05
UTC" here). Django's English default, "May 1, 2026,
9:22 p.m.", gives every attempt of a burst the same time."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
