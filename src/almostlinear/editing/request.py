"""What an edit asks for: a prompt template, the subject that fills it, and the new target."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import AlmostLinearError


class EditRequestError(AlmostLinearError):
    """An edit request that cannot be carried out as written."""


@dataclass(frozen=True)
class EditRequest:
    """``prompt`` holds one ``{}`` where ``subject`` goes; ``target`` is the new continuation.

    The target is written without a leading space; it follows the prompt after one space, as in
    ``"{} is located in"`` + ``"Paris"`` → ``"Eiffel Tower is located in Paris"``.
    ``true_target`` (optional) is what the model said before, used by evaluation.
    """

    prompt: str
    subject: str
    target: str
    true_target: str | None = None

    def __post_init__(self) -> None:
        if self.prompt.count("{}") != 1:
            raise EditRequestError(f"the prompt must contain exactly one '{{}}' for the subject: {self.prompt!r}")
        if not self.subject.strip():
            raise EditRequestError("the subject is empty")
        if not self.target.strip():
            raise EditRequestError("the target is empty")

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)
