"""``DropsStateKeys``: layers that take keys out of a ``state_dict`` before torch loads it.

torch's ``_load_from_state_dict`` loads every key that names a parameter or buffer and
reports the rest; a layer that accepts checkpoints of another shape (a batch norm's for
a frozen one, pre-0.4 instance norms with untracked statistics) removes those keys first.
The override of torch's hook lives here once; each layer says which keys it drops.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DropsStateKeys"]


class DropsStateKeys:
    """Mixin, before the torch class: ``_drop_state_keys`` runs before torch's loading."""

    def _drop_state_keys(
        self, state_dict: dict[str, Any], prefix: str, version: int | None, errors: list[str]
    ) -> None:
        """Remove this layer's keys (``prefix`` + name) that torch must not load; append
        to ``errors`` when dropping them is a mistake to report. ``version``: the
        checkpoint's version of the layer (None before torch 0.4)."""

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._drop_state_keys(state_dict, prefix, local_metadata.get("version"), error_msgs)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
