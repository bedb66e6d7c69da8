"""The LLM judge client: any OpenAI-compatible chat-completions endpoint, configured by the environment.

Used by the open-ended QA benchmarks (`eval/qa_open.py`) and Video-ChatGPT
(`eval/videochatgpt.py`), which bring their own prompts and reply parsers.

Configuration comes only from environment variables: STREAMMIND_JUDGE_BASE_URL (e.g.
https://api.openai.com/v1; requests go to <base>/chat/completions), STREAMMIND_JUDGE_MODEL,
and OPENAI_API_KEY (sent as a bearer token when set; never logged or written). Requests go
through httpx. Redirects are followed only within the endpoint's own origin (scheme, host
and port) and only as 307 / 308 (which keep the POST); a redirect anywhere else is refused
before anything is sent there (`JudgeConfigError`: point STREAMMIND_JUDGE_BASE_URL at the
final endpoint), so the key never reaches another host.

`Judge.ask(messages, parse)` sends one chat request and parses the reply with `parse`.
Network errors, timeouts, HTTP 408/409/425/429 and 5xx, and replies `parse` rejects
(`JudgeResponseError`) are retried (`max_attempts`) with exponential backoff from
`backoff_s` seconds (honouring Retry-After); other HTTP 4xx fail that request (`JudgeError`);
HTTP 401/403/404 raise `JudgeConfigError` at once (a configuration error).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from ..errors import UserError

logger = logging.getLogger(__name__)

ENV_BASE_URL = "STREAMMIND_JUDGE_BASE_URL"
ENV_MODEL = "STREAMMIND_JUDGE_MODEL"
ENV_API_KEY = "OPENAI_API_KEY"


class JudgeConfigError(UserError, RuntimeError):
    """The judge is not configured, or the endpoint refuses us (bad URL, model or key)."""


class JudgeError(RuntimeError):
    """One judgement failed after all retries."""


class JudgeResponseError(ValueError):
    """The judge's reply is not a usable judgement."""


@dataclass
class JudgeConfig:
    """Where and how to call the judge. `api_key` is never shown in reprs or logs."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    temperature: float = 0.0
    max_tokens: int = 100
    timeout_s: float = 60.0
    max_attempts: int = 5
    backoff_s: float = 1.0  # first retry delay; doubles each time

    @classmethod
    def from_env(cls, **overrides) -> JudgeConfig:
        """Read STREAMMIND_JUDGE_BASE_URL, STREAMMIND_JUDGE_MODEL and OPENAI_API_KEY."""
        base_url, model = os.environ.get(ENV_BASE_URL, "").strip(), os.environ.get(ENV_MODEL, "").strip()
        missing = [name for name, value in ((ENV_BASE_URL, base_url), (ENV_MODEL, model)) if not value]
        if missing:
            raise JudgeConfigError(
                f"the QA judge is not configured: set {' and '.join(missing)} (an OpenAI-compatible endpoint, e.g. "
                f"{ENV_BASE_URL}=https://api.openai.com/v1 and {ENV_MODEL}=gpt-4o-mini, plus {ENV_API_KEY} if it needs "
                "a key), or pass --skip-judge to write predictions only"
            )
        return cls(base_url=base_url.rstrip("/"), model=model, api_key=os.environ.get(ENV_API_KEY) or None, **overrides)


_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401, 403, 404}
# Same-origin redirects followed per request (307 / 308 only: they keep the method and body).
_MAX_REDIRECTS = 5


class JudgeHTTPError(Exception):
    """The endpoint answered with an HTTP error status."""

    def __init__(self, code: int, reason: str, retry_after: str | None = None):
        super().__init__(f"HTTP {code} {reason}")
        self.code, self.reason, self.retry_after = code, reason, retry_after


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


class Judge:
    """Calls an OpenAI-compatible chat-completions endpoint and parses judgements."""

    def __init__(self, config: JudgeConfig):
        self.config = config

    def _post(self, payload: dict) -> dict:
        """One request (following same-origin 307/308 redirects); returns the decoded JSON body.

        Raises:
            JudgeHTTPError: an HTTP error status.
            JudgeConfigError: a redirect to another origin or with another status (not followed).
            httpx.TransportError, json.JSONDecodeError: as they come.
        """
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        url = httpx.URL(f"{self.config.base_url}/chat/completions")
        origin = _origin(url)
        body = json.dumps(payload).encode("utf-8")
        with httpx.Client(timeout=self.config.timeout_s, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                response = client.post(url, content=body, headers=headers)
                if not response.is_redirect:
                    break
                target = url.join(response.headers["location"])
                if _origin(target) != origin:
                    raise JudgeConfigError(
                        f"the judge endpoint {self.config.base_url} redirects to another host ({target.scheme}://{target.host}"
                        f"{f':{target.port}' if target.port else ''}); refused, the request and its credentials stay with "
                        f"the configured host: set {ENV_BASE_URL} to the final endpoint"
                    )
                if response.status_code not in (307, 308):
                    raise JudgeConfigError(
                        f"the judge endpoint answered HTTP {response.status_code} (a redirect that turns the POST into a GET) "
                        f"to {target}: set {ENV_BASE_URL} to the final endpoint"
                    )
                url = target
            else:
                raise JudgeError(f"more than {_MAX_REDIRECTS} redirects from {self.config.base_url}")
            if response.status_code >= 400:
                raise JudgeHTTPError(response.status_code, response.reason_phrase, response.headers.get("Retry-After"))
            return json.loads(response.content.decode("utf-8"))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), 60.0)
            except ValueError:
                pass
        return self.config.backoff_s * 2**attempt

    def ask(self, messages: Sequence[Mapping[str, str]], parse: Callable[[str], object]) -> tuple[object, str]:
        """Send chat `messages` and parse the reply with `parse` (which raises JudgeResponseError
        on an unusable reply, retried like a transient error); returns (parsed, raw reply text).

        Raises:
            JudgeConfigError: HTTP 401/403/404, or a redirect to another host (fix the configuration).
            JudgeError: still failing after `max_attempts`.
        """
        payload = {
            "model": self.config.model,
            "messages": [dict(message) for message in messages],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        last_error = "no attempt made"
        for attempt in range(self.config.max_attempts):
            retry_after = None
            try:
                body = self._post(payload)
                content = body["choices"][0]["message"]["content"] or ""
                return parse(content), content
            except JudgeHTTPError as error:
                if error.code in _FATAL_STATUS:
                    raise JudgeConfigError(
                        f"the judge endpoint answered HTTP {error.code} {error.reason} for {self.config.base_url} "
                        f"(model {self.config.model!r}): check {ENV_BASE_URL}, {ENV_MODEL} and {ENV_API_KEY}"
                    ) from None
                if error.code not in _RETRY_STATUS and error.code < 500:
                    raise JudgeError(str(error)) from None
                last_error, retry_after = str(error), error.retry_after
            except (httpx.TransportError, TimeoutError, ConnectionError) as error:
                last_error = f"{type(error).__name__}: {error}"
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as error:
                last_error = f"malformed response body ({type(error).__name__})"
            except JudgeResponseError as error:
                last_error = str(error)
            if attempt + 1 < self.config.max_attempts:
                delay = self._delay(attempt, retry_after)
                logger.warning("judge attempt %d failed (%s); retrying in %.1f s", attempt + 1, last_error, delay)
                time.sleep(delay)
        raise JudgeError(f"judge failed after {self.config.max_attempts} attempts: {last_error}")


__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "ENV_MODEL", "Judge", "JudgeConfig", "JudgeConfigError", "JudgeError", "JudgeResponseError"]
