"""WSGI entry point for the admin web UI."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentmail_site.settings")
application = get_wsgi_application()
