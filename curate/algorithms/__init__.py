"""algorithms layer."""
