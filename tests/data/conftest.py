"""Fixtures for the data tests: tiny fake Fashion-MNIST folders, a fake URL opener, and a
guard that makes any real network access fail."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bnlab.data import fashion_mnist
from bnlab.data.fashion_mnist import FileSpec
from bnlab.data.synthetic import write_fake_fashion_mnist


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: the real opener fails loudly."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a test tried to open a URL: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    fashion_mnist.clear_verification_cache()
    yield
    fashion_mnist.clear_verification_cache()


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, tuple[FileSpec, ...]]:
    """A folder with four small valid .gz files and their specs."""
    folder = tmp_path / "fake"
    return folder, write_fake_fashion_mnist(folder, train_count=30, test_count=10)


class FakeResponse(io.BytesIO):
    """What urlopen returns, for bytes served from memory."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self._fail_after = fail_after

    def read(self, n: int | None = -1) -> bytes:
        if self._fail_after is not None and self.tell() >= self._fail_after:
            raise ConnectionResetError("connection reset by peer (fake)")
        if self._fail_after is not None and n is not None and n > 0:
            n = min(n, self._fail_after - self.tell())
        return super().read(n)


class FakeOpener:
    """Serves ``url -> [bytes or exception, ...]``, one entry per call, the last repeated."""

    def __init__(self, plan: dict[str, list[Any]]) -> None:
        self.plan = plan
        self.calls: list[str] = []

    def __call__(self, request: urllib.request.Request, timeout: float) -> FakeResponse:
        url = request.full_url
        self.calls.append(url)
        answers = self.plan[url]
        answer = answers[min(self.calls.count(url), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, tuple):  # (bytes, fail_after)
            return FakeResponse(*answer)
        return FakeResponse(answer)


@pytest.fixture
def serve(fake: tuple[Path, tuple[FileSpec, ...]]) -> Callable[..., FakeOpener]:
    """``serve(**overrides)``: an opener serving the fake files at the mirror's URLs."""
    folder, specs = fake

    def make(overrides: dict[str, list[Any]] | None = None) -> FakeOpener:
        plan: dict[str, list[Any]] = {
            spec.url(): [(folder / spec.name).read_bytes()] for spec in specs
        }
        for name, answers in (overrides or {}).items():
            plan[fashion_mnist.MIRROR_URL + name] = answers
        return FakeOpener(plan)

    return make


@pytest.fixture
def make_opener() -> type[FakeOpener]:
    """The ``FakeOpener`` class, for plans built in a test."""
    return FakeOpener
