"""The platform under everything: settings, logging, the Redis connection and clock,
sealing of secrets at rest, pseudonyms of user ids, the Redis users (ACL)."""
