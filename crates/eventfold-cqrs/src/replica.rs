//! The replica side: consumers that apply django-cqrs messages.
