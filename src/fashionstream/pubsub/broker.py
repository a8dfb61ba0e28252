"""`Broker`: one broker named by a URL without a topic, and the topic and subscription URLs on it.

    from fashionstream.pubsub import parse_broker

    broker = parse_broker("kafka://127.0.0.1:9092")
    broker.topic_url("images")                          # kafka://127.0.0.1:9092/images
    broker.subscription_url("images", "model-service")  # kafka://127.0.0.1:9092/images?group=model-service
    broker.cloudevents_prefix                           # "ce_": how CloudEvents attributes are spelled there

Code that is configured with one broker (a command line, a service) and works
with several topics uses this instead of writing URLs itself: every rule of a
scheme's URLs lives in its driver (`drivers/<scheme>`), and this module only
asks. A broker URL names no topic and carries no query parameters; native
client settings such as SASL or TLS are passed as options, not in the URL.
No client library is imported: any install can check any broker URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fashionstream.pubsub.driver import ParsedURL
from fashionstream.pubsub.drivers import DriverModule, load_driver, schemes
from fashionstream.pubsub.errors import InvalidArgument
from fashionstream.pubsub.urls import parse_url, safe_url


@dataclass(frozen=True)
class Broker:
    """A broker URL, checked by its driver; makes the URLs of topics and subscriptions on that broker."""

    url: str  # as given, e.g. "kafka://127.0.0.1:9092"
    scheme: str  # "mem", "kafka", "gcppubsub"
    cloudevents_prefix: str  # attribute prefix of the scheme's CloudEvents binding: "ce_" (Kafka) or "ce-"
    _parsed: ParsedURL = field(repr=False, compare=False)

    @property
    def _driver(self) -> DriverModule:
        return load_driver(self.scheme)  # imported once: a dictionary lookup after the first call

    def topic_url(self, topic: str) -> str:
        """The URL of `topic` on this broker, for `open_topic` and `admin.create_topic`."""
        url = self._driver.topic_url(self._parsed, topic)
        if not topic or self._names(url) != (topic, None):
            raise self._unwritable("topic", topic, url)
        return url

    def subscription_url(self, topic: str, subscription: str) -> str:
        """The URL to receive `topic` as `subscription` (a Kafka consumer group, a Pub/Sub subscription).

        On Pub/Sub the URL names only the subscription: it was bound to its topic when created.
        """
        url = self._driver.subscription_url(self._parsed, topic, subscription)
        url_topic, url_subscription = self._names(url)
        if not topic or not subscription or url_subscription != subscription:
            raise self._unwritable("subscription", subscription, url)
        if url_topic not in (None, topic):
            raise self._unwritable("topic", topic, url)
        return url

    def _names(self, url: str) -> tuple[str | None, str | None]:
        # A name with characters the scheme's URLs cannot carry ('/', '?', ...) makes a URL that
        # names something else, or nothing: reading the URL back shows it.
        try:
            parsed = parse_url(url)
            return self._driver.resource_names(parsed) if parsed.scheme == self.scheme else (None, None)
        except InvalidArgument:
            return None, None

    def _unwritable(self, what: str, name: str, url: str) -> InvalidArgument:
        return InvalidArgument(f"{what} name {name!r} cannot be written in a {self.scheme}:// URL ({safe_url(url)!r})")

    def __str__(self) -> str:
        return safe_url(self.url)


def parse_broker(url: str) -> Broker:
    """The `Broker` named by `url`; InvalidArgument (a ValueError) whose message says "broker URL" otherwise.

    Accepted forms: see `broker_url_help()`.
    """
    try:
        parsed = parse_url(url)
        driver = load_driver(parsed.scheme)
        if parsed.query:
            raise InvalidArgument(
                f"broker URL {safe_url(url)!r} has query parameters; a broker URL names only the broker: "
                "pass native client settings (SASL, TLS, timeouts) as options, not in the URL"
            )
        driver.check_broker_url(parsed)
    except InvalidArgument as err:
        if "broker URL" in str(err):
            raise
        # Grammar errors shared with topic URLs (a bad port) say what kind of URL was wrong here.
        raise InvalidArgument(f"bad broker URL {safe_url(url)!r}: {err}") from None
    return Broker(url, driver.SCHEME, driver.CLOUDEVENTS_PREFIX, parsed)


def broker_url_help() -> str:
    """The accepted broker URL forms, for help texts: "gcppubsub://projects/PROJECT, kafka://... or mem:// (...)"."""
    forms = [load_driver(scheme).BROKER_URL_FORM for scheme in schemes()]
    return forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"


__all__ = ["Broker", "broker_url_help", "parse_broker"]
