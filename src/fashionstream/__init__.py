"""fashionstream: streaming Fashion-MNIST classification over message brokers."""

__version__ = "0.1.0"
