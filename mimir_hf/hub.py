"""The Hugging Face Hub, asked before it is used: an endpoint that does not answer costs seconds, not the minutes of
retries `huggingface_hub` would spend, and the message names the offline way."""

from __future__ import annotations

import os
import re

import huggingface_hub
from huggingface_hub.utils import get_session

HUB_ANSWER_SECONDS = 5.0  # how long the Hub has to answer the first request before a run gives up on it


def hub_problem(timeout: float | None = None) -> Exception | None:
    """None when the Hub's endpoint (`HF_ENDPOINT`) answers an HTTP request within `timeout` seconds (any status;
    default `HUB_ANSWER_SECONDS`), else the error that says why not. Asked through `huggingface_hub`'s own HTTP session,
    so proxies, certificates and a client factory set for it apply."""
    timeout = HUB_ANSWER_SECONDS if timeout is None else timeout
    try:
        get_session().get(f"{huggingface_hub.constants.ENDPOINT}/api/spaces?limit=1", timeout=timeout)
    except Exception as error:  # the HTTP client's connect / read timeouts and network errors
        return error
    return None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "owner/name", as the Hub names repositories


def hub_ids(*names: str | None) -> list[str]:
    """The names among `names` that would be fetched from the Hub: shaped like a Hub id ("owner/name") and not an
    existing local path (an absolute or ./ path is local, found or not)."""
    return [name for name in names if name and _HUB_ID.match(name) and not os.path.exists(name)]


def check_hub_answers(*names: str | None) -> None:
    """Before a run reads `names` (model or dataset ids), a `ValueError` within seconds when some would come from the
    Hub and the Hub does not answer, naming the offline ways; nothing to do offline (`HF_HUB_OFFLINE=1`)."""
    remote = hub_ids(*names)
    if not remote or huggingface_hub.constants.HF_HUB_OFFLINE or (problem := hub_problem()) is None:
        return
    raise ValueError(
        f"The Hugging Face Hub ({huggingface_hub.constants.ENDPOINT}) does not answer ({type(problem).__name__} "
        f"within {HUB_ANSWER_SECONDS:g} s), and {', '.join(remote)} would be read from it. Check the network, or work "
        "offline: a local folder instead of the Hub id, or HF_HUB_OFFLINE=1 to use the copy in your Hugging Face "
        "cache."
    )


__all__ = ["HUB_ANSWER_SECONDS", "check_hub_answers", "hub_ids", "hub_problem"]
