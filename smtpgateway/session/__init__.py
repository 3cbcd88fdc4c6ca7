"""One SMTP conversation: the protocol and its command loop, the AUTH exchange,
the body, addresses and the reply catalogue.

This layer never touches the ORM: it imports no ``django.db``, no models module
and no storage module but the job types (``smtpgateway.storage.jobs``), which it
hands to the database threads (``tests/unit/test_layers.py`` checks the rule).
"""
