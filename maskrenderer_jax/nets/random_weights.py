"""The one warning for a frozen backbone that runs without its converted pretrained weights."""

import logging


def warn_random_weights(name: str, converter: str, consequence: str) -> str:
    """Logs (logging.WARNING) and returns the message that `name` runs on random weights."""
    message = (
        f"{name} has RANDOM weights (none were converted; see `python -m {converter}`): "
        f"{consequence}"
    )
    logging.warning(message)
    return message
