//! The master side: models whose saves and deletes record django-cqrs messages in the caller's transaction.
