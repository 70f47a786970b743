"""One mapping from Touchline's Kafka security settings (TLS, SASL) to the options of each client
library the project uses, so every client connects the same way:

- kafka-python (`KafkaAdminClient`, `KafkaProducer`): admin tooling, the simulator and replay;
- aiokafka (`AIOKafkaConsumer`): the worker's batch consumers;
- Faust (`broker_credentials`): the worker's producer, its agents' consumer and its topic admin.
"""

from __future__ import annotations

import ssl
from typing import Any

from pipeline.config import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL (None for PLAINTEXT / SASL_PLAINTEXT)."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile and settings.kafka_ssl_keyfile:
        password = settings.kafka_ssl_key_password.get_secret_value() if settings.kafka_ssl_key_password else None
        context.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile), password)
    return context


def _sasl(settings: Settings) -> dict[str, Any]:
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return {}
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    return {
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": password,
    }


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python (KafkaAdminClient, KafkaProducer) and aiokafka
    (AIOKafkaConsumer): both take the same names. Empty for PLAINTEXT."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol, **_sasl(settings)}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context  # the same CA, client certificate and hostname check everywhere
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` (None for PLAINTEXT)."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        assert context is not None
        return faust.SSLCredentials(context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    # SASLCredentials speaks SASL_SSL when given a context, SASL_PLAINTEXT without one
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password,
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )
