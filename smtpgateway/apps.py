from django.apps import AppConfig


class SmtpGatewayConfig(AppConfig):
    name = "smtpgateway"
    verbose_name = "SMTP gateway"
    default_auto_field = "django.db.models.BigAutoField"
