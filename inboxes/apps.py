from django.apps import AppConfig


class InboxesConfig(AppConfig):
    name = "inboxes"
    verbose_name = "Inboxes"
    default_auto_field = "django.db.models.BigAutoField"
