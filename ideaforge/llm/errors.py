"""Errors of the LLM layer (kept apart so the client and the budget can both raise them)."""

from __future__ import annotations


class LLMError(RuntimeError):
    """The provider could not produce a completion (config, auth, rate limit, outage). Never holds a key.

    ``retryable`` says whether trying again later may help (rate limits, 5xx, network) or not (auth, bad request).
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class BudgetExhausted(LLMError):
    """A call was refused before it started: the campaign's LLM spending cap is reached. Not retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)
