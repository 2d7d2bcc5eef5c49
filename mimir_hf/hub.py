"""The Hugging Face Hub, asked before it is used: an endpoint that does not answer costs seconds, not the minutes of
retries `huggingface_hub` would spend, and the message names the offline way. A failure while the trainers use it
(creating the repository, pushing) is one line too (`hub_errors`), naming the repository and the way to push later."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING

import huggingface_hub
from huggingface_hub.utils import get_session

if TYPE_CHECKING:
    from transformers import TrainingArguments

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


_NETWORK_MODULES = ("httpx", "httpx2", "httpcore", "huggingface_hub", "requests", "urllib3")


def _is_hub_error(error: BaseException) -> bool:
    """A failure to reach or use the Hub: a network or HTTP error, or one of huggingface_hub's."""
    modules = {klass.__module__.split(".")[0] for klass in type(error).__mro__}
    return isinstance(error, (ConnectionError, TimeoutError)) or bool(modules & set(_NETWORK_MODULES))


@contextmanager
def hub_errors(args: TrainingArguments, trained: bool):
    """Turn a Hub failure inside the block into one `ValueError` line: the Hub, the repository, and the offline way.
    An endpoint that does not answer within seconds is such a failure, found before `huggingface_hub`'s retries."""
    try:
        if (problem := hub_problem()) is not None:  # seconds, where huggingface_hub's retries would take minutes
            raise problem
        yield
    except Exception as error:
        if not _is_hub_error(error):
            raise
        repo = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        state = (
            f"The model is saved in {args.output_dir}; push it later, online and logged in (`hf auth login`), with "
            f"`hf upload {repo} {args.output_dir}`"
            if trained
            else "Nothing was trained. Log in (`hf auth login`) and check the network, or train without --push_to_hub"
        )
        raise ValueError(
            f"The Hugging Face Hub could not be reached for the repository {repo} ({type(error).__name__}: {reason}). "
            f"{state}; to work offline, leave --push_to_hub out (HF_HUB_OFFLINE=1 keeps every step local)."
        ) from None


__all__ = ["HUB_ANSWER_SECONDS", "check_hub_answers", "hub_errors", "hub_ids", "hub_problem"]
