"""``manage.py demohint``: what `make run` tells a new user about the admin."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print where the admin is and, if no superuser exists yet, how to create one."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write("Admin web UI: http://127.0.0.1:8000/admin/")
        if not get_user_model().objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "No admin login exists yet. In another terminal run:\n    .venv/bin/python manage.py createsuperuser"
            )
