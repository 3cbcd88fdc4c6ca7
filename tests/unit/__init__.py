"""No server: pure functions, the ORM functions and the admin through Django's test client."""
