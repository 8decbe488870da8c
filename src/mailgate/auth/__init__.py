"""The auth_http client, and the auth service mailgate ships."""
