"""Error types of the core. The TorchServe handler maps them to HTTP status codes per request."""


class InputError(ValueError):
    """Bad input from a caller: undecodable image, empty prompt, unknown method, bad topk, bad arch/checkpoint.

    The message names the problem; it is safe to return to a client (HTTP 400).
    """


class ImageTooLargeError(InputError):
    """An image over the configured pixel limit (HTTP 413)."""
